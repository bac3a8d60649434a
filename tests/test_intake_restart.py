"""Durability across restarts: a graceful stop, a kill -9, and leases left behind."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pydicom
from pynetdicom import AE

from dicom_node.listener import STORAGE_SOP_CLASSES
from storage import worklist
from storage.db import open_database
from tests.dicom_factory import StudyUids, make_radiograph, write_study
from tests.peers import store_responses, storescu


def test_graceful_restart_keeps_queued_work_and_requeues_expired_leases(
    node_factory, tmp_path
) -> None:
    node = node_factory("restart", worklist={"max_attempts": 3}).start()
    files = write_study(tmp_path / "study", 3)
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    assert store_responses(storescu(node.port, files).stderr) == ["Success"] * 3
    node.wait_for_state(study_uid, "QUEUED")
    assert node.stop() == 0
    assert node.events("node_stopped")

    # A worker claimed the study and died: its lease expired while the node was down.
    database = open_database(f"sqlite:///{node.data_dir / 'worklist.sqlite'}")
    with database.sessions.begin() as session:
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        assert worklist.claim_next(session, "dead-worker", 60, long_ago) is not None
    database.dispose()

    node.start()
    study = node.cli_json("studies", "show", study_uid)
    assert (study["state"], study["attempts"], study["instance_count"]) == ("QUEUED", 1, 3)
    assert "dead-worker" in study["last_error"]
    for instance in study["instances"]:
        assert (node.data_dir / "spool" / instance["spool_path"]).is_file()
    assert any(e["study_instance_uid"] == study_uid for e in node.events("lease_expired"))


class StreamingSender(threading.Thread):
    """One association sending small instances of one study until the node goes away."""

    def __init__(self, port: int, study: StudyUids, wanted: int) -> None:
        super().__init__()
        self.port, self.study, self.wanted = port, study, wanted
        self.acknowledged: list[str] = []
        self.enough = threading.Event()

    def run(self) -> None:
        ae = AE(ae_title="STREAMER")
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_requested_context(sop_class)
        association = ae.associate("127.0.0.1", self.port, ae_title="AINODE")
        try:
            for i in range(400):
                ds = make_radiograph(study=self.study, instance_number=i + 1, rows=32, columns=32)
                response = association.send_c_store(ds)
                if not association.is_established or "Status" not in response:
                    return
                if response.Status == 0:
                    self.acknowledged.append(ds.SOPInstanceUID)
                if len(self.acknowledged) >= self.wanted:
                    self.enough.set()
        finally:
            self.enough.set()
            if association.is_established:
                association.abort()


def assert_all_acknowledged_are_kept(node, study: StudyUids, acknowledged: list[str]) -> None:
    detail = node.cli_json("studies", "show", study.study)
    recorded = {i["sop_instance_uid"]: i for i in detail["instances"]}
    assert set(acknowledged) <= set(recorded)
    assert detail["instance_count"] == len(recorded)
    for uid in acknowledged:
        spooled = pydicom.dcmread(node.data_dir / "spool" / recorded[uid]["spool_path"])
        assert spooled.SOPInstanceUID == uid and len(spooled.PixelData) == 32 * 32 * 2


def test_kill_9_loses_nothing_that_was_acknowledged(node_factory) -> None:
    node = node_factory("kill9", worklist={"stable_seconds": 3600}).start()
    study = StudyUids()
    sender = StreamingSender(node.port, study, wanted=20)
    sender.start()
    assert sender.enough.wait(timeout=120)
    assert node.kill_hard() < 0  # killed mid-stream, no clean shutdown
    sender.join(timeout=60)
    assert len(sender.acknowledged) >= 20
    node.start()
    assert_all_acknowledged_are_kept(node, study, sender.acknowledged)


def test_sigterm_mid_stream_finishes_in_flight_and_exits_cleanly(node_factory) -> None:
    node = node_factory("sigterm", worklist={"stable_seconds": 3600})
    node.start()
    study = StudyUids()
    sender = StreamingSender(node.port, study, wanted=10)
    sender.start()
    assert sender.enough.wait(timeout=120)
    assert node.stop() == 0  # SIGTERM while the peer is still sending
    sender.join(timeout=60)
    stopped = node.events("listener_stopped")
    assert stopped and stopped[0]["drained"] is True
    assert node.events("node_stopped")
    assert_all_acknowledged_are_kept(node, study, sender.acknowledged)  # read with the node down
