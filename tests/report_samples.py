"""Inputs for the report builder tests: source image headers, findings and an algorithm."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from dicom_node.reporting.content import AlgorithmInfo, FindingOutcome

WHEN = datetime.datetime(2024, 3, 1, 9, 30, 0, tzinfo=datetime.UTC)

# (label, code, site, probability, threshold): a mix of standard and private codes.
FINDINGS = (
    ("Atelectasis", ("46621007", "SCT", "Atelectasis"), ("39607008", "SCT", "Lung"), 0.71, 0.43),
    ("Cardiomegaly", ("8186001", "SCT", "Cardiomegaly"), None, 0.12, 0.50),
    ("Enlarged Cardiomediastinum", ("ENLCM", "99DCMNODE", "Enlarged cardiomediastinum"),
     ("72410000", "SCT", "Mediastinum"), 0.30, 0.30),
    ("Pleural Effusion", ("60046008", "SCT", "Pleural effusion"), None, 0.05, 0.40),
    ("Pneumothorax", ("36118008", "SCT", "Pneumothorax"), None, 0.88, 0.61),
)


def dx_image(study_uid: str, number: int = 1, *, orientation: bool = True) -> Dataset:
    """A small DX 'For Presentation' chest image with the attributes a modality sends."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Müller^Anna"
    ds.PatientID = "PID-0001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.StudyDate, ds.StudyTime = "20240301", "091500"
    ds.AccessionNumber, ds.StudyID = "ACC1", "1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    if orientation:
        ds.PatientOrientation = ["L", "F"]
    ds.ImagerPixelSpacing = [0.2, 0.2]
    ds.Rows, ds.Columns = 64, 48
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((64, 48), np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def findings() -> list[FindingOutcome]:
    return [
        FindingOutcome(
            label=label,
            code=Code(*code),
            site=Code(*site) if site else None,
            probability=p,
            threshold=t,
            present=p >= t,
        )
        for label, code, site, p, t in FINDINGS
    ]


def algorithm(*, clinical_use: bool = False, profile: str = "v3") -> AlgorithmInfo:
    return AlgorithmInfo(
        name="chexzero-demo-synthetic",
        checkpoint_sha256s=("a1" * 32, "b2" * 32),
        profile=profile,
        clinical_use=clinical_use,
        catalogue_version="cat0001",
        aggregation="mean",
        conversion="equalize",
    )


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(errors, warnings) reported by dicom3tools for a file."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        raise RuntimeError("dciodvfy (Debian package dicom3tools) is not installed")
    run = subprocess.run([tool, str(path)], check=False, capture_output=True, text=True, timeout=60)
    lines = (run.stdout + run.stderr).splitlines()
    return (
        [line for line in lines if line.startswith("Error")],
        [line for line in lines if line.startswith("Warning")],
    )
