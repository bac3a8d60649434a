"""Small, realistic DX/CR datasets for tests (the synthetic-study generator lives in ml/synth).

`make_radiograph(kind="DX", view="PA", ...)` returns a pydicom Dataset with proper file meta,
UIDs and the chest radiograph header a modality would send: 16-bit (or 12-bit stored) grey
pixels, MONOCHROME2 or MONOCHROME1, ViewPosition, optional compression through the pydicom
encoders that are installed (RLE, JPEG-LS, JPEG 2000) or Pillow (JPEG baseline, 8-bit).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import uid as uids
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

SOP_CLASSES = {
    "DX": uids.DigitalXRayImageStorageForPresentation,
    "DX-PROCESSING": uids.DigitalXRayImageStorageForProcessing,
    "CR": uids.ComputedRadiographyImageStorage,
    "CT": uids.CTImageStorage,  # not accepted by the node: for refusal tests
}
TEST_UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, as generate_uid uses


@dataclass
class StudyUids:
    """UIDs shared by the instances of one study/series."""

    study: str = field(default_factory=lambda: generate_uid(TEST_UID_ROOT))
    series: str = field(default_factory=lambda: generate_uid(TEST_UID_ROOT))


def chest_like_pixels(rows: int, columns: int, bits_stored: int, seed: int) -> np.ndarray:
    """A smooth thorax-like intensity field with two darker lung fields and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    y /= max(rows - 1, 1)
    x /= max(columns - 1, 1)
    body = np.exp(-(((x - 0.5) / 0.42) ** 4) - (((y - 0.55) / 0.55) ** 4))
    lungs = sum(
        np.exp(-(((x - cx) / 0.13) ** 2) - (((y - 0.45) / 0.25) ** 2)) for cx in (0.32, 0.68)
    )
    image = 0.15 + 0.75 * body - 0.45 * lungs + rng.normal(0, 0.02, (rows, columns))
    top = (1 << bits_stored) - 1
    return np.clip(image * top, 0, top).astype(np.uint16)


def make_radiograph(
    *,
    kind: str = "DX",
    view: str = "PA",
    photometric: str = "MONOCHROME2",
    rows: int = 96,
    columns: int = 80,
    bits_stored: int = 12,
    study: StudyUids | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    transfer_syntax: str = uids.ExplicitVRLittleEndian,
    seed: int = 0,
) -> Dataset:
    """A chest radiograph dataset with file meta, ready for `write(ds, path)` or a C-STORE."""
    study = study or StudyUids()
    sop_class = SOP_CLASSES[kind]
    ds = Dataset()
    _patient_and_study(ds, study)
    _series_and_instance(ds, kind, sop_class, study, sop_instance_uid, instance_number, view)
    pixels = chest_like_pixels(rows, columns, bits_stored, seed)
    if photometric == "MONOCHROME1":
        pixels = ((1 << bits_stored) - 1 - pixels).astype(np.uint16)
    _image_pixels(ds, pixels, bits_stored, photometric)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    _encode(ds, UID(transfer_syntax))
    return ds


def _patient_and_study(ds: Dataset, study: StudyUids) -> None:
    now = datetime.now()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Phantom^Test"  # synthetic; the node must never log it
    ds.PatientID = "PHANTOM-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study.study
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "ACC0001"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.StudyDescription = "XR CHEST"


def _series_and_instance(
    ds: Dataset,
    kind: str,
    sop_class: str,
    study: StudyUids,
    sop_uid: str | None,
    number: int,
    view: str,
) -> None:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid(TEST_UID_ROOT)
    ds.SeriesInstanceUID = study.series
    ds.Modality = "CR" if kind == "CR" else ("CT" if kind == "CT" else "DX")
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Manufacturer = "dicom-node tests"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.PatientOrientation = ["L", "F"] if view in ("PA", "AP") else ["P", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImagerPixelSpacing = [0.143, 0.143]
    ds.ImageLaterality = "U"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.AnatomicRegionSequence = [_code("T-D3000", "SRT", "Chest")]
    ds.AcquisitionContextSequence = []
    if kind.startswith("DX"):
        processing = kind == "DX-PROCESSING"
        ds.PresentationIntentType = "FOR PROCESSING" if processing else "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.PositionerType = ""
        ds.PixelIntensityRelationship = "LIN" if processing else "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleType = "US"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _image_pixels(ds: Dataset, pixels: np.ndarray, bits_stored: int, photometric: str) -> None:
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if ds.get("PresentationIntentType") != "FOR PROCESSING":
        ds.WindowCenter = 1 << (bits_stored - 1)
        ds.WindowWidth = 1 << bits_stored
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    if ds.Modality == "DX":
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
    else:
        ds.RescaleType = "US"
    ds.PixelData = pixels.tobytes()


def _encode(ds: Dataset, syntax: UID) -> None:
    if syntax in (
        uids.ExplicitVRLittleEndian,
        uids.ImplicitVRLittleEndian,
        uids.DeflatedExplicitVRLittleEndian,
    ):
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == uids.JPEGBaseline8Bit:
        _jpeg_baseline(ds)
    elif syntax == uids.JPEG2000:
        ds.compress(syntax, j2k_cr=[20])
    elif syntax == uids.JPEGLSNearLossless:
        ds.compress(syntax, jls_error=2)
    else:
        ds.compress(syntax)  # RLE, JPEG-LS lossless, JPEG 2000 lossless via installed plugins


def _jpeg_baseline(ds: Dataset) -> None:
    """8-bit JPEG baseline via Pillow (pydicom has no JPEG baseline encoder)."""
    pixels = ds.pixel_array.astype(np.float32)
    eight = (pixels / ((1 << ds.BitsStored) - 1) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(eight).save(buffer, format="JPEG", quality=90)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    if "WindowCenter" in ds:
        ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionRatio = f"{eight.nbytes / len(buffer.getvalue()):.2f}"[:16]
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.file_meta.TransferSyntaxUID = uids.JPEGBaseline8Bit


def write(ds: Dataset, path: Path) -> Path:
    """Save as a DICOM file (preamble and file meta) at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_study(
    directory: Path,
    count: int,
    *,
    kind: str = "DX",
    study: StudyUids | None = None,
    transfer_syntax: str = uids.ExplicitVRLittleEndian,
) -> list[Path]:
    """`count` instances of one study (PA, LL, AP, ...) as files in `directory`."""
    study = study or StudyUids()
    views = ("PA", "LL", "AP")
    paths = []
    for i in range(count):
        ds = make_radiograph(
            kind=kind,
            study=study,
            instance_number=i + 1,
            view=views[i % len(views)],
            seed=i,
            transfer_syntax=transfer_syntax,
        )
        paths.append(write(ds, directory / f"{kind.lower()}-{i + 1:04d}.dcm"))
    return paths


# --- odd but real inputs (issue 10): views without ViewPosition, bits above High Bit --------


def view_code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    """One View Code Sequence item (CID 4010), e.g. view_code("399173006", "left lateral")."""
    return _code(value, scheme, meaning)


def without_view_position(ds: Dataset, *, view_code_item: Dataset | None = None) -> Dataset:
    """`ds` with ViewPosition and Patient Orientation removed (and a View Code Sequence item
    set when given): the view is then stated nowhere else unless the test adds it."""
    for keyword in ("ViewPosition", "PatientOrientation"):
        if keyword in ds:
            delattr(ds, keyword)
    if view_code_item is not None:
        ds.ViewCodeSequence = [view_code_item]
    return ds


def overlay_bars(pixels: np.ndarray, bits: tuple[int, ...] = (12, 13)) -> np.ndarray:
    """`pixels` with graphics burnt into the given bit planes above Bits Stored: a band of rows
    and a short thick line per plane (what embedded overlays of old modalities look like)."""
    rows, columns = pixels.shape
    marked = pixels.copy()
    for i, bit in enumerate(bits):
        top = rows // 6 + i * rows // 3
        marked[top : top + max(rows // 12, 2), :] |= np.uint16(1 << bit)
        marked[top + rows // 6 : top + rows // 6 + 3, columns // 8 : columns // 2] |= np.uint16(
            1 << bit)
    return marked


def declare_embedded_overlays(ds: Dataset, bits: tuple[int, ...] = (12, 13)) -> None:
    """Overlay Plane modules whose data is in the pixel data's high bits (retired in DICOM,
    still sent by old modalities): group 60xx with Overlay Bits Allocated 16 and a position."""
    for i, bit in enumerate(bits):
        group = 0x6000 + 2 * i
        ds.add_new((group, 0x0010), "US", ds.Rows)
        ds.add_new((group, 0x0011), "US", ds.Columns)
        ds.add_new((group, 0x0040), "CS", "G")
        ds.add_new((group, 0x0050), "SS", [1, 1])
        ds.add_new((group, 0x0100), "US", 16)
        ds.add_new((group, 0x0102), "US", bit)


def encode_j2k_lossless(ds: Dataset, pixels: np.ndarray, precision: int) -> Dataset:
    """Replace the pixel data of an uncompressed MONOCHROME `ds` with `pixels` encoded as JPEG
    2000 lossless with the codestream `precision` (which may exceed the header's Bits Stored,
    as a modality that compresses whole 16-bit words does); the header is left as it is."""
    import openjpeg

    codestream = openjpeg.encode(
        np.ascontiguousarray(pixels), bits_stored=precision, photometric_interpretation=2,
        use_mct=False,
    )
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = uids.JPEG2000Lossless
    return ds


# --- other storage objects a PACS forwards with a study (intake helper) ------------------------

OTHER_SOP_CLASSES = {
    "CT": uids.CTImageStorage,
    "SR": uids.ComprehensiveSRStorage,
    "KO": uids.KeyObjectSelectionDocumentStorage,
    "PR": uids.GrayscaleSoftcopyPresentationStateStorage,
    "SC": uids.SecondaryCaptureImageStorage,
}


def make_other_object(kind: str, study: StudyUids, seed: int = 0) -> Dataset:
    """A small object of SOP class OTHER_SOP_CLASSES[kind] in `study` (its own series): the
    header a PACS would forward, with a 32x32 image for CT and SC. Not a complete IOD."""
    if kind == "CT":
        return make_radiograph(kind="CT", study=study, rows=32, columns=32, seed=seed)
    ds = Dataset()
    _patient_and_study(ds, study)
    ds.SOPClassUID = OTHER_SOP_CLASSES[kind]
    ds.SOPInstanceUID = generate_uid(TEST_UID_ROOT)
    ds.SeriesInstanceUID = generate_uid(TEST_UID_ROOT)
    ds.Modality = {"SR": "SR", "KO": "KO", "PR": "PR", "SC": "OT"}[kind]
    ds.SeriesNumber = 90 + seed
    ds.InstanceNumber = 1
    if kind == "SC":
        _image_pixels(ds, chest_like_pixels(32, 32, 8, seed), 8, "MONOCHROME2")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = uids.ExplicitVRLittleEndian
    return ds
