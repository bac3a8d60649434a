"""Structured logs: JSON lines (or key=value text) with UIDs and AE titles, never patient data."""

from __future__ import annotations

import io
import json
import logging

import pytest

from dicom_node.logs import configure_logging, log_event
from dicom_node.settings import LoggingSettings


@pytest.fixture
def capture():
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_the_fields(capture: io.StringIO) -> None:
    configure_logging(LoggingSettings(level="INFO", format="json"), stream=capture)
    log_event(
        logging.getLogger("dicom_node.test"),
        "instance_stored",
        sop_instance_uid="1.2.3",
        calling_ae="MODALITY",
        peer="10.0.0.1:104",
    )
    record = json.loads(capture.getvalue())
    assert record["event"] == "instance_stored"
    assert (record["sop_instance_uid"], record["calling_ae"]) == ("1.2.3", "MODALITY")
    assert record["level"] == "INFO" and record["ts"].endswith("+00:00")


def test_patient_fields_are_dropped(capture: io.StringIO) -> None:
    configure_logging(LoggingSettings(level="INFO", format="json"), stream=capture)
    log_event(
        logging.getLogger("dicom_node.test"),
        "oops",
        patient_name="Doe^Jane",
        PatientID="123",
        study_instance_uid="1.2",
    )
    record = json.loads(capture.getvalue())
    assert "Doe^Jane" not in capture.getvalue() and "123" not in json.dumps(record)
    assert record["study_instance_uid"] == "1.2"


def test_text_format(capture: io.StringIO) -> None:
    configure_logging(LoggingSettings(level="INFO", format="text"), stream=capture)
    log_event(logging.getLogger("dicom_node.test"), "echo", calling_ae="ECHOSCU")
    line = capture.getvalue().strip()
    assert " INFO " in line and "echo" in line and "calling_ae=ECHOSCU" in line


def test_level_filters(capture: io.StringIO) -> None:
    configure_logging(LoggingSettings(level="WARNING", format="json"), stream=capture)
    log_event(logging.getLogger("dicom_node.test"), "quiet")
    log_event(logging.getLogger("dicom_node.test"), "loud", level=logging.WARNING)
    assert [json.loads(x)["event"] for x in capture.getvalue().splitlines()] == ["loud"]


def test_only_the_complaint_about_an_accepted_uid_is_silenced(capture: io.StringIO) -> None:
    """pydicom's warn_and_log (a "pydicom" line and a Python warning) for a leading-zero UID the
    node accepts is dropped; the same complaint about a UID it refuses, and other warnings, stay."""
    import warnings

    from pydicom.dataset import Dataset

    with warnings.catch_warnings():  # restores warnings.showwarning on exit
        warnings.simplefilter("always")
        configure_logging(LoggingSettings(level="INFO", format="json"), stream=capture)
        Dataset().StudyInstanceUID = "1.2.826.0.1.3680043.8.498.2026.011.029.7.01"
        Dataset().StudyInstanceUID = "1.2..3"  # an empty component: refused at intake
        Dataset().BodyPartExamined = "chest"  # lower case: not a CS value
    lines = [json.loads(line) for line in capture.getvalue().splitlines()]
    texts = [line.get("message", "") + line.get("text", "") for line in lines]
    assert not any("011.029" in t for t in texts)
    assert sum("Invalid value for VR UI" in t for t in texts) == 2  # the log line and warning
    assert sum("Invalid value for VR CS" in t for t in texts) == 2
    assert all("'chest'" not in t and "1.2..3" not in t for t in texts)
