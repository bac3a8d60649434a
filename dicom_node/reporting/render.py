"""What the node's Secondary Captures (the summary image, the attention-map overlays) share:
the font drawn with, word wrapping, the patient and study copied from the source image, and the
series, equipment and file meta of an AI-made Secondary Capture."""

from __future__ import annotations

import datetime
from pathlib import Path

from PIL import ImageFont
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_node.reporting.content import MANUFACTURER, AlgorithmInfo
from dicom_node.reporting.uids import InstanceUids

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
CHARACTER_SET = "ISO_IR 192"  # UTF-8: the caveat text is not Latin-1
NOT_FOR_CLINICAL_USE = " - NOT FOR CLINICAL USE"

Font = ImageFont.ImageFont | ImageFont.FreeTypeFont

_PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription",
)


def font(bold: bool, size: int) -> Font:
    """DejaVu Sans at `size` pixels when installed (Debian fonts-dejavu-core), else Pillow's
    built-in font."""
    path = FONT_DIR / ("DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf")
    if path.exists():
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def wrap(text: str, drawn_with: Font, width: float) -> list[str]:
    """`text` split at spaces into lines at most `width` pixels long in `drawn_with` (a word
    longer than that gets a line of its own)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and drawn_with.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def copy_patient_and_study(ds: Dataset, source: Dataset) -> None:
    """Patient and study attributes of `ds` from `source`, a tolerant header (every Type 2
    keyword present, values valid or empty); sets the UTF-8 character set."""
    ds.SpecificCharacterSet = CHARACTER_SET
    for keyword in _PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(ds, keyword, source.data_element(keyword).value)


def add_series_and_equipment(ds: Dataset, uids: InstanceUids, algorithm: AlgorithmInfo,
                             when: datetime.datetime, description: str) -> None:
    """SOP, series (`description`, at most 64 characters kept), equipment (the algorithm) and
    content date/time (`when`, also the Series Date/Time) of a Secondary Capture."""
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = uids.sop_instance_uid
    ds.Modality = "OT"
    ds.BodyPartExamined = "CHEST"  # unpaired, so Laterality (type 2C) is absent
    ds.SeriesInstanceUID = uids.series_instance_uid
    ds.SeriesNumber = uids.series_number
    ds.SeriesDescription = description[:64]
    ds.InstanceNumber = uids.instance_number
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = algorithm.name[:64]
    ds.SoftwareVersions = algorithm.version[:64]
    ds.ConversionType = "WSD"
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.InstanceCreationDate = ds.ContentDate
    ds.InstanceCreationTime = ds.ContentTime
    ds.SeriesDate = ds.ContentDate  # else archives file the series under an unknown date
    ds.SeriesTime = ds.ContentTime


def add_file_meta(ds: Dataset) -> None:
    """File meta of a Secondary Capture written as Explicit VR Little Endian."""
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
