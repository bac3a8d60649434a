"""C-ECHO and C-STORE against a running node with real dcmtk peers."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from pydicom import uid as uids

from storage import worklist
from storage.db import open_database
from tests.dicom_factory import StudyUids, make_radiograph, write, write_study
from tests.peers import NodeProcess, echoscu, store_responses, storescu

# storescu options that propose the compressed transfer syntax of the file
COMPRESSED = {
    uids.JPEGLSLossless: "-xt",
    uids.JPEGLSNearLossless: "-xu",
    uids.JPEG2000Lossless: "-xv",
    uids.JPEG2000: "-xw",
    uids.RLELossless: "-xr",
    uids.JPEGBaseline8Bit: "-xy",
    uids.DeflatedExplicitVRLittleEndian: "-xd",
}


def study_json(node: NodeProcess, study_uid: str) -> dict:
    return node.cli_json("studies", "show", study_uid)


def test_echo_answers(shared_node: NodeProcess) -> None:
    result = echoscu(shared_node.port)
    assert result.returncode == 0
    assert "Received Echo Response (Success)" in result.stderr + result.stdout


@pytest.mark.parametrize("kind", ["DX", "DX-PROCESSING", "CR"])
def test_store_is_spooled_and_recorded(shared_node: NodeProcess, tmp_path: Path, kind: str) -> None:
    files = write_study(tmp_path, 2, kind=kind)
    result = storescu(shared_node.port, files)
    assert store_responses(result.stderr + result.stdout) == ["Success", "Success"]
    sent = [pydicom.dcmread(f) for f in files]
    study = study_json(shared_node, sent[0].StudyInstanceUID)
    assert study["instance_count"] == 2
    assert {i["sop_instance_uid"] for i in study["instances"]} == {d.SOPInstanceUID for d in sent}
    assert {i["view_position"] for i in study["instances"]} == {"PA", "LL"}
    for instance, original in zip(study["instances"], sent, strict=True):
        spooled = pydicom.dcmread(shared_node.data_dir / "spool" / instance["spool_path"])
        assert spooled.SOPInstanceUID == instance["sop_instance_uid"]
        assert spooled.PixelData == original.PixelData
        assert spooled.file_meta.SourceApplicationEntityTitle.strip() == "STORESCU"


@pytest.mark.parametrize("syntax", list(COMPRESSED), ids=lambda s: uids.UID(s).keyword)
def test_store_keeps_the_transfer_syntax(
    shared_node: NodeProcess, tmp_path: Path, syntax: str
) -> None:
    ds = make_radiograph(kind="DX", photometric="MONOCHROME1", transfer_syntax=syntax)
    path = write(ds, tmp_path / "compressed.dcm")
    result = storescu(shared_node.port, [path], options=[COMPRESSED[syntax]])
    assert store_responses(result.stderr + result.stdout) == ["Success"]
    (instance,) = study_json(shared_node, ds.StudyInstanceUID)["instances"]
    assert instance["transfer_syntax_uid"] == syntax
    spooled = pydicom.dcmread(shared_node.data_dir / "spool" / instance["spool_path"])
    assert spooled.file_meta.TransferSyntaxUID == syntax
    assert spooled.pixel_array.shape == ds.pixel_array.shape  # decodable as sent


def test_dataset_without_study_uid_fails_and_node_keeps_serving(
    shared_node: NodeProcess, tmp_path: Path
) -> None:
    ds = make_radiograph()
    del ds.StudyInstanceUID
    result = storescu(shared_node.port, [write(ds, tmp_path / "no-study.dcm")])
    assert store_responses(result.stderr + result.stdout) == ["Error: CannotUnderstand"]
    failures = [
        e
        for e in shared_node.events("store_failed")
        if e.get("sop_instance_uid") == ds.SOPInstanceUID
    ]
    assert failures and failures[0]["status"] == "0xC210"
    assert echoscu(shared_node.port).returncode == 0


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("field", ["StudyInstanceUID", "SOPInstanceUID"])
def test_path_escaping_uid_is_rejected(
    shared_node: NodeProcess, tmp_path: Path, field: str
) -> None:
    ds = make_radiograph()
    setattr(ds, field, "1.2/../../../../escaped")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    result = storescu(shared_node.port, [write(ds, tmp_path / "escape.dcm")])
    assert store_responses(result.stderr + result.stdout) == ["Error: CannotUnderstand"]
    written = [p for p in shared_node.workdir.rglob("*escaped*")]
    assert written == []


def test_duplicate_instance_is_acknowledged_once(shared_node: NodeProcess, tmp_path: Path) -> None:
    (path,) = write_study(tmp_path, 1)
    first = storescu(shared_node.port, [path])
    again = storescu(shared_node.port, [path, path])
    assert store_responses(first.stderr + first.stdout) == ["Success"]
    assert store_responses(again.stderr + again.stdout) == ["Success", "Success"]
    ds = pydicom.dcmread(path)
    study = study_json(shared_node, ds.StudyInstanceUID)
    assert study["instance_count"] == 1
    assert len(study["instances"]) == 1
    duplicates = [
        e
        for e in shared_node.events("duplicate_instance")
        if e["sop_instance_uid"] == ds.SOPInstanceUID
    ]
    assert len(duplicates) == 2


def test_late_instance_reopens_a_done_study(node_factory, tmp_path: Path) -> None:
    node = node_factory("reopen").start()  # its own work list: the only study to claim
    study = StudyUids()
    first = write(make_radiograph(study=study, seed=1), tmp_path / "first.dcm")
    assert store_responses(storescu(node.port, [first]).stderr) == ["Success"]
    node.wait_for_state(study.study, "QUEUED")
    database = open_database(f"sqlite:///{node.data_dir / 'worklist.sqlite'}")
    try:
        with database.sessions.begin() as session:  # a worker's part, done by hand
            claimed = worklist.claim_next(session, "test-worker", 60, datetime.now(UTC))
            assert claimed is not None and claimed.study_instance_uid == study.study
            worklist.complete(session, claimed.study_id, "test-worker", datetime.now(UTC))
    finally:
        database.dispose()
    assert study_json(node, study.study)["state"] == "DONE"
    late_ds = make_radiograph(study=study, seed=2, view="LL")
    late, late_uid = write(late_ds, tmp_path / "late.dcm"), late_ds.SOPInstanceUID
    assert store_responses(storescu(node.port, [late]).stderr) == ["Success"]
    late_event = [e for e in node.events("instance_stored") if e["sop_instance_uid"] == late_uid]
    assert late_event[0]["reopened_from"] == "DONE"
    # Reopened to RECEIVING, then queued again after the quiet period, with both instances.
    node.wait_for_state(study.study, "QUEUED")
    reopened = study_json(node, study.study)
    assert (reopened["instance_count"], reopened["reopened_count"]) == (2, 1)


def test_logs_are_json_with_uids_and_no_patient_data(shared_node: NodeProcess) -> None:
    stored = shared_node.events("instance_stored")
    assert stored, "no instance_stored event logged"
    assert {"sop_instance_uid", "study_instance_uid", "calling_ae", "peer"} <= set(stored[0])
    text = shared_node.log()
    for line in text.splitlines():
        if line.startswith("{"):
            json.loads(line)
    assert "Phantom" not in text and "PHANTOM-0001" not in text
