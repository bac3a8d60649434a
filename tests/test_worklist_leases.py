"""Leases and send claims of a process on another host come back as soon as its heartbeat is
stale (no waiting for `lease_seconds`), never while it still beats; on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from dicom_node.heartbeat import lease_stale_after_seconds
from dicom_node.sender import Sender
from dicom_node.settings import DestinationSettings, load_settings
from dicom_node.worker import Worker, outbox_for
from storage import heartbeat as heartbeats
from storage import outbound, worklist
from storage.db import Database
from storage.spool import Spool
from storage.states import StudyState
from tests.conftest import BOTH_BACKENDS
from tests.outbound_samples import queue_result

pytestmark = BOTH_BACKENDS

HEARTBEAT_S = 0.2
T0 = datetime.now(UTC)
KILLED, ALIVE = "gpu-host-1:4242", "gpu-host-2:4343"


def _beat(database: Database, process_id: str, at: datetime) -> None:
    host, pid = process_id.split(":")
    report = heartbeats.Beat(host, int(pid), "worker", T0 - timedelta(hours=1), "loaded")
    with database.sessions.begin() as session:
        heartbeats.beat(session, report, at)


def _queue(database: Database, study: str) -> None:
    record = worklist.InstanceRecord(
        sop_instance_uid=f"{study}.1", series_instance_uid=f"{study}.2", study_instance_uid=study,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="DX", body_part_examined="CHEST", view_position="PA",
        spool_path=f"{study}/{study}.1.dcm", size_bytes=1, calling_ae_title=None)
    with database.sessions.begin() as session:
        worklist.record_instance(session, record, T0)
        worklist.queue_stable_studies(session, 0, T0)


@pytest.fixture
def settings(tmp_path):
    return load_settings(environ={}, overrides={
        "node": {"data_dir": str(tmp_path / "data"), "heartbeat_seconds": HEARTBEAT_S},
        "worklist": {"lease_seconds": 600}})


def test_a_lease_whose_holder_stopped_beating_comes_back_at_once(database, settings) -> None:
    for study, holder in (("1.2.3.1", KILLED), ("1.2.3.2", ALIVE)):
        _queue(database, study)
        with database.sessions.begin() as session:
            assert worklist.claim_next(session, f"{holder}:7f01", 600, T0) is not None
    worker = Worker(settings=settings, database=database, spool=Spool(settings.spool_path),
                    outbox=outbox_for(settings), clock=lambda: datetime.now(UTC))
    time.sleep(lease_stale_after_seconds(HEARTBEAT_S))  # this worker has reached the database
    now = datetime.now(UTC)
    _beat(database, KILLED, now - timedelta(seconds=2 * HEARTBEAT_S))
    _beat(database, ALIVE, now)

    assert worker.release_gone_leases() == 1
    with database.read_only() as session:
        killed, _ = worklist.study_detail(session, "1.2.3.1")
        alive, _ = worklist.study_detail(session, "1.2.3.2")
    assert (killed.state, killed.attempts, killed.worker_id) == (StudyState.QUEUED, 1, None)
    assert "stopped while holding the lease" in killed.last_error
    assert (alive.state, alive.worker_id) == (StudyState.PROCESSING, f"{ALIVE}:7f01")


def test_a_new_worker_does_not_judge_heartbeats_before_it_has_seen_one_interval(
    database, settings
) -> None:
    _queue(database, "1.2.3.1")
    with database.sessions.begin() as session:
        worklist.claim_next(session, f"{KILLED}:7f01", 600, T0)
    _beat(database, KILLED, datetime.now(UTC) - timedelta(seconds=10))  # e.g. after an outage
    worker = Worker(settings=settings, database=database, spool=Spool(settings.spool_path),
                    outbox=outbox_for(settings), clock=lambda: datetime.now(UTC))
    assert worker.release_gone_leases() == 0


def test_send_claims_of_a_sender_that_stopped_beating_come_back(database, settings) -> None:
    outbox = outbox_for(settings)
    queue_result(database, outbox, ["pacs"])  # an SR and a summary image for "pacs"
    with database.sessions.begin() as session:
        first = outbound.claim_due(session, "pacs", T0, 600, 1, KILLED)
        second = outbound.claim_due(session, "pacs", T0, 600, 1, ALIVE)
    assert len(first) == len(second) == 1
    pacs = DestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=1)
    sender = Sender(database=database, outbox_root=outbox.root,
                    destinations=[pacs], calling_ae="AINODE", settings=settings.outbound,
                    heartbeat_seconds=HEARTBEAT_S)
    time.sleep(lease_stale_after_seconds(HEARTBEAT_S))
    now = datetime.now(UTC)
    _beat(database, KILLED, now - timedelta(seconds=2 * HEARTBEAT_S))
    _beat(database, ALIVE, now)

    assert sender.release_gone_claims() == 1
    with database.read_only() as session:
        holders = outbound.claim_holders(session)
    assert holders == [ALIVE]
