"""A study's result never dies on a header value: the tolerant copier (one table of the values
real devices send), the retry decision, redaction of third-party warnings, and the real node
with an image carrying several of them."""

from __future__ import annotations

import json
import sqlite3
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from sqlalchemy.exc import OperationalError

from dicom_node.failures import describe, is_permanent
from dicom_node.logs import REDACTED, redact, warning_fields
from dicom_node.reporting.evidence import tolerant_header
from dicom_node.reporting.sr import build_findings_sr
from dicom_node.reporting.summary import build_summary_sc
from dicom_node.reporting.uids import ResultKey, report_uids
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import NodeProcess, storescu
from tests.report_samples import WHEN, algorithm, dciodvfy, dx_image, findings

COPIED, EMPTIED = "copied", "emptied"

# (keyword, value a device sent, what the copier does with it)
BAD_VALUES = [
    ("PatientSex", "U", EMPTIED),
    ("PatientSex", "f", EMPTIED),
    ("PatientSex", "MALE", EMPTIED),
    ("PatientSex", "O", COPIED),
    ("PatientBirthDate", "00000000", EMPTIED),
    ("PatientBirthDate", "19700231", EMPTIED),
    ("PatientBirthDate", "1970-01-01", EMPTIED),
    ("StudyDate", "2024.03.01", EMPTIED),
    ("StudyTime", "9:15", EMPTIED),
    ("StudyTime", "250000", EMPTIED),
    ("StudyTime", "091500.123", COPIED),
    ("PatientName", "SMITHSINGLE", COPIED),  # one component is valid PN; highdicom only warns
    ("PatientName", "A" * 70, EMPTIED),
    ("PatientName", "Tab\there", EMPTIED),
    ("PatientID", "X" * 65, EMPTIED),
    ("PatientID", "A\\B", EMPTIED),  # two values where VM is 1
    ("AccessionNumber", "A" * 17, EMPTIED),
    ("StudyID", "ID\x01", EMPTIED),
    ("StudyDescription", "D" * 65, EMPTIED),
    ("ReferringPhysicianName", "DOCTOR", COPIED),
    ("PatientAge", "45", EMPTIED),
    ("PatientAge", "045Y", COPIED),
    ("PatientWeight", "heavy", EMPTIED),
    ("ImagerPixelSpacing", "0.000\\0.000", EMPTIED),  # a real Philips CR sends this
    ("ImagerPixelSpacing", "0.143", EMPTIED),
    ("ImagerPixelSpacing", "0.143\\0.143", COPIED),
    ("PixelSpacing", "0.2", EMPTIED),
    ("PatientOrientation", "L", EMPTIED),
    ("PatientOrientation", "X\\Y", EMPTIED),
    ("PatientOrientation", "A\\FL", COPIED),
    ("ViewPosition", "pa", EMPTIED),
    ("Modality", "dx", EMPTIED),
    ("InstitutionName", "I" * 65, EMPTIED),
    ("StationName", "ST\\ATION", EMPTIED),
    ("AcquisitionDate", "20241301", EMPTIED),
]


def _with_raw_value(keyword: str, value: str) -> Dataset:
    """A header as a device sent it: the raw bytes, converted on access as after dcmread."""
    ds = dx_image(generate_uid())
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    raw = value.encode("latin-1")
    raw += b" " if len(raw) % 2 else b""
    ds[tag] = RawDataElement(tag, pydicom.datadict.dictionary_VR(tag), len(raw), raw, 0, False,
                             True, True, False)
    return ds


def _uids(ds: Dataset):
    key = ResultKey.of(study_instance_uid=ds.StudyInstanceUID, model_name="m",
                       checkpoint_sha256s=["a" * 64], profile="v1",
                       source_sop_instance_uids=[ds.SOPInstanceUID])
    return report_uids(key, version=1, labels=[f.label for f in findings()])


@pytest.mark.parametrize(("keyword", "value", "expected"), BAD_VALUES)
def test_tolerant_copier_copies_valid_values_and_empties_the_rest(
    keyword, value, expected, tmp_path
):
    ds = _with_raw_value(keyword, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the value as it converts it
        header = tolerant_header(ds)
    copied = header.dataset[keyword]
    if expected == COPIED:
        assert keyword not in header.emptied
        values = copied.value if copied.VM > 1 else [copied.value]
        assert "\\".join(str(v) for v in values) == value
    else:
        assert header.emptied[keyword]  # named, with the kind of problem
        assert value not in header.emptied[keyword]
        assert copied.is_empty
    uids = _uids(ds)
    sr = build_findings_sr(evidence=[ds], findings=findings(), algorithm=algorithm(),
                           uids=uids.sr, tracking_uids=dict(uids.tracking), node_uid="1.2.3",
                           content_datetime=WHEN)
    summary = build_summary_sc(evidence=[ds], findings=findings(), algorithm=algorithm(),
                               uids=uids.summary, content_datetime=WHEN)
    for name, built in (("sr", sr), ("summary", summary)):
        path = tmp_path / f"{name}.dcm"
        built.save_as(path, enforce_file_format=True)
        errors, _ = dciodvfy(path)
        assert errors == [], f"{name}: {errors}"


def test_identity_uids_are_copied_unchanged_even_with_leading_zeros():
    ds = dx_image("1.2.826.0.1.3680043.8.498.2026.011.029.7.01")
    header = tolerant_header(ds).dataset
    assert header.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.2026.011.029.7.01"
    assert header.SOPInstanceUID == ds.SOPInstanceUID


def test_sequence_item_with_a_bad_value_is_left_out_and_named():
    ds = dx_image(generate_uid())
    good, bad = Dataset(), Dataset()
    good.CodeValue, good.CodingSchemeDesignator, good.CodeMeaning = "36554-4", "LN", "XR chest"
    bad.CodeValue, bad.CodingSchemeDesignator = "X" * 17, "LN"
    bad.CodeMeaning = "too long a code value"
    ds.ProcedureCodeSequence = [good, bad]
    header = tolerant_header(ds)
    assert [item.CodeValue for item in header.dataset.ProcedureCodeSequence] == ["36554-4"]
    assert "ProcedureCodeSequence>CodeValue" in header.emptied


@pytest.mark.parametrize(
    ("exc", "permanent"),
    [
        (ValueError("'U' is not a valid PatientSexValues"), True),
        (TypeError("'DSfloat' object is not subscriptable"), True),
        (AttributeError("'FileDataset' object has no attribute 'PatientSex'"), True),
        (KeyError("StudyDate"), True),
        (IndexError("list index out of range"), True),
        (UnicodeDecodeError("ascii", b"\xff", 0, 1, "bad"), True),
        (InvalidDicomError("File is missing DICOM File Meta Information header"), True),
        (FileNotFoundError(2, "No such file"), True),
        (NotImplementedError("no decoder for this transfer syntax"), True),
        (OSError(28, "No space left on device"), False),
        (PermissionError(13, "Permission denied"), False),
        (TimeoutError("timed out"), False),
        (ConnectionResetError(104, "reset"), False),
        (OperationalError("UPDATE study", {}, sqlite3.OperationalError("database is locked")),
         False),
        (MemoryError(), False),
        (RuntimeError("CUDA out of memory"), False),
    ],
)
def test_only_transient_errors_are_retried(exc, permanent):
    assert is_permanent(exc) is permanent


def test_failure_reason_names_the_error_without_the_value():
    reason = describe(ValueError("Unable to convert '19700101' to 'DA' object"))
    assert reason == f"ValueError: Unable to convert '{REDACTED}' to 'DA' object"


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ('The string "SMITHSINGLE" is unlikely to represent the intended person name',
         "intended person name", "SMITHSINGLE"),
        ("Invalid value for VR DA: '00000000'.", "VR DA", "00000000"),
        ("Value of 'PatientSex' is 'u'", "'PatientSex'", "'u'"),
        ("patient Muller^Anna born 19700101", "born", "Muller"),
        ("The value length (80) exceeds the maximum length of 64 allowed for VR LO.",
         "The value length (80) exceeds the maximum length of 64 allowed for VR LO.", "\x00"),
        ("tag (0010,0010) value b'SECRET'", "(0010,0010)", "SECRET"),
        # Python's own messages name code, and the admin needs it to see what broke
        ("'BatchingScorer' object has no attribute 'heat_maps'",
         "'BatchingScorer' object has no attribute 'heat_maps'", REDACTED),
        ("module 'ml.engine' has no attribute 'x'; value 'SMITH'", "module 'ml.engine'", "SMITH"),
        ("'NoneType' object is not subscriptable", "'NoneType' object is not", REDACTED),
        ("Cannot convert 'SMITH' to 'DA' object", "'DA'", "SMITH"),
    ],
)
def test_redaction_keeps_attribute_names_and_drops_values(text, kept, gone):
    redacted = redact(text)
    assert kept in redacted
    assert gone not in redacted


def test_warning_fields_keep_category_module_and_attribute():
    fields = warning_fields("Invalid value for PatientSex: 'U'", UserWarning,
                            "/venv/lib/python3.11/site-packages/pydicom/valuerep.py")
    assert fields == {"category": "UserWarning", "module": "pydicom.valuerep",
                      "attributes": ["PatientSex"],
                      "text": f"Invalid value for PatientSex: '{REDACTED}'"}


# --- the real node -----------------------------------------------------------------------------

PATIENT_NAME, PATIENT_ID = "SMITHSINGLE", "PIDSECRET77"


def _hostile_radiograph(study: StudyUids) -> Dataset:
    ds = make_radiograph(view="PA", study=study, rows=256, columns=256, seed=4)
    ds.PatientName, ds.PatientID = PATIENT_NAME, PATIENT_ID
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.PatientSex = "U"
        ds.PatientBirthDate = "00000000"
        ds.StudyTime = "7h77"
        ds["ImagerPixelSpacing"].value = "0.000\\0.000"
    return ds


@pytest.mark.slow
def test_node_reports_a_study_whose_header_highdicom_refuses(tmp_path: Path):
    node = NodeProcess.create(tmp_path / "node", worker={"enabled": True})
    study = StudyUids()
    path = write(_hostile_radiograph(study), tmp_path / "in" / "hostile.dcm")
    try:
        node.start()
        sent = storescu(node.port, [path], called_ae=node.ae_title)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        node.wait_for_state(study.study, "DONE", timeout=120)
        outbox = node.data_dir / "outbox"
        objects = node.wait_for(lambda: list(outbox.rglob("*.dcm"))[2:] and
                                list(outbox.rglob("*.dcm")), "SR, summary, text in the outbox")
        classes = sorted(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID.name
                         for p in objects)
        # the summary, and the attention-map overlays of any finding called present
        assert classes[:2] == ["Comprehensive SR Storage", "Enhanced SR Storage"]
        assert set(classes[2:]) == {"Secondary Capture Image Storage"}
        node.wait_for(lambda: node.events("python_warning"), "the highdicom warning", 30)
    finally:
        node.stop()
    log = node.log()
    for value in (PATIENT_NAME, PATIENT_ID, "00000000", "7h77"):
        assert value not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert all(isinstance(json.loads(line), dict) for line in lines)
    (emptied,) = node.events("evidence_values_emptied")
    assert set(emptied["attributes"]) == {
        "PatientSex", "PatientBirthDate", "StudyTime", "ImagerPixelSpacing"
    }
    person_name = [w for w in node.events("python_warning") if "person name" in w["text"]]
    assert person_name and REDACTED in person_name[0]["text"]
    assert person_name[0]["category"] == "UserWarning"
    assert person_name[0]["module"].startswith("highdicom")


def test_a_missing_spool_or_outbox_file_is_named_by_its_uids():
    gone = FileNotFoundError(2, "No such file or directory",
                             "/var/lib/dicom-node/spool/1.2.3/1.2.3.4.dcm")
    assert describe(gone) == "the spool file 1.2.3/1.2.3.4.dcm is missing (deleted outside the node?)"
    sent = FileNotFoundError(2, "No such file or directory", "/data/outbox/1.2.3/1.2.9.dcm")
    assert describe(sent).startswith("the outbox file 1.2.3/1.2.9.dcm is missing")
    other = FileNotFoundError(2, "No such file or directory", "/home/Smith^John/x.dcm")
    assert "Smith" not in describe(other) and describe(other).startswith("FileNotFoundError")
