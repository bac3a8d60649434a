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
