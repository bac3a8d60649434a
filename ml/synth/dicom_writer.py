"""Synthetic studies as DICOM files: DX (For Presentation) or CR, MONOCHROME1 or 2, 12 to 16
bits stored, a frontal PA/AP instance and sometimes a lateral one in a second series.

Every value comes from (seed, study index): UIDs are hashes of them (2.25 form), dates are
offsets from a fixed day, names are SYNTH^NNNN; nothing reads the clock, so the same seed gives
the same bytes.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import date, timedelta
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from ml.synth.convert import to_stored
from ml.synth.render import frontal_shape, render_frontal, render_lateral
from ml.synth.spec import StudySpec

if TYPE_CHECKING:
    from ml.synth.dataset import SynthOptions

DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
CR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.1")
TRANSFER_SYNTAXES = {"none": ExplicitVRLittleEndian, "rle": RLELossless,
                     "jpegls": JPEGLSLossless, "j2k": JPEG2000Lossless}
IMPLEMENTATION_UID = UID("2.25.231958301944915637296426575536843463415")
DETECTOR_MM = 430.0
VIEW_CODES = {"PA": ("399348003", "postero-anterior"), "AP": ("399182006", "antero-posterior"),
              "LL": ("399173006", "left lateral")}


def synth_uid(*parts: object) -> UID:
    """A 2.25 UID (a 128-bit number) hashed from the parts: stable across runs and machines."""
    text = "/".join(["dicom-node-synth", *(str(p) for p in parts)])
    return UID("2.25." + str(int(hashlib.sha256(text.encode()).hexdigest()[:32], 16)))


def study_datasets(spec: StudySpec, options: SynthOptions,
                   folder: str) -> Iterator[tuple[str, bool, str, bytes]]:
    """(relative path, frontal?, view, file bytes) for each image of the study."""
    rng = np.random.default_rng([spec.seed, spec.index, 3])
    modality = "DX" if rng.random() < 0.6 else "CR"
    monochrome1 = bool(rng.random() < 0.3)
    bits = int(rng.choice([12, 14, 16]))
    common = _study_level(spec, modality)
    height = options.height
    width = frontal_shape(spec, height)[1]
    frontal = render_frontal(spec, height, width)
    yield (f"{folder}/view1_frontal.dcm", True, spec.view,
           _instance(common, spec, frontal, 1, spec.view, modality, monochrome1, bits, options))
    if spec.with_lateral and options.laterals:
        lateral = render_lateral(spec, height, height)
        yield (f"{folder}/view2_lateral.dcm", False, "LL",
               _instance(common, spec, lateral, 2, "LL", modality, monochrome1, bits, options))


def _study_level(spec: StudySpec, modality: str) -> Dataset:
    ds = Dataset()
    day = date(2021, 1, 4) + timedelta(days=(spec.seed * 7919 + spec.index) % 1400)
    seconds = (spec.index * 2711) % 36000 + 7 * 3600
    ds.PatientName = f"SYNTH^{spec.index + 1:04d}"
    ds.PatientID = f"SYNTH-{spec.seed}-{spec.index + 1:06d}"
    ds.PatientBirthDate = f"{day.year - spec.age:04d}0101"
    ds.PatientSex = spec.sex
    ds.PatientAge = f"{spec.age:03d}Y"
    ds.StudyInstanceUID = synth_uid(spec.seed, spec.index, "study")
    ds.StudyDate = day.strftime("%Y%m%d")
    ds.StudyTime = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"
    ds.AccessionNumber = f"SYN{spec.seed % 10000:04d}{spec.index + 1:06d}"
    ds.StudyID = f"{spec.index + 1}"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST PORTABLE AP" if spec.view == "AP" else "CHEST PA AND LATERAL"
    ds.Modality = modality
    ds.Manufacturer = "dicom-node synthetic phantom"
    ds.ManufacturerModelName = "SYNTH-CXR"
    ds.InstitutionName = "SYNTHETIC - NOT A PATIENT"
    ds.BodyPartExamined = "CHEST"
    return ds


def _instance(common: Dataset, spec: StudySpec, image: np.ndarray, number: int, view: str,
              modality: str, monochrome1: bool, bits: int, options: SynthOptions) -> bytes:
    ds = Dataset()
    ds.update(common)
    sop_class = DX_FOR_PRESENTATION if modality == "DX" else CR_IMAGE
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = synth_uid(spec.seed, spec.index, "instance", number)
    ds.SeriesInstanceUID = synth_uid(spec.seed, spec.index, "series", number)
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = ds.StudyDate
    ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = ds.StudyTime
    ds.SeriesDescription = "LATERAL" if view == "LL" else view
    ds.ViewPosition = view
    ds.PatientOrientation = ["P", "F"] if view == "LL" else ["L", "F"]
    ds.ImageLaterality = "U"
    if modality == "DX":
        ds.ViewCodeSequence = [_code(*VIEW_CODES[view])]
    _pixels(ds, image, monochrome1, bits)
    ds.ImagerPixelSpacing = [f"{DETECTOR_MM / image.shape[0]:.4f}"] * 2
    ds.KVP = "120" if view != "AP" else "90"
    if modality == "DX":
        _dx_module(ds, monochrome1)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    return _encode(ds, options.compress)


def _pixels(ds: Dataset, image: np.ndarray, monochrome1: bool, bits: int) -> None:
    stored = to_stored(image, bits, monochrome1)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    low, high = np.percentile(stored, [1, 99.5])
    ds.WindowCenter = f"{(low + high) / 2:.1f}"
    ds.WindowWidth = f"{max(high - low, 1):.1f}"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PixelData = stored.astype("<u2").tobytes()


def _dx_module(ds: Dataset, monochrome1: bool) -> None:
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PositionerType = ""
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.DetectorType = "SCINTILLATOR"
    ds.AcquisitionContextSequence = []
    ds.AnatomicRegionSequence = [_code("43799004", "Chest")]


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def _encode(ds: Dataset, compress: str) -> bytes:
    syntax = TRANSFER_SYNTAXES[compress]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DICOMNODE_SYN1"
    ds.file_meta = meta
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
