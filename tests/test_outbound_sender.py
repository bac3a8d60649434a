"""Delivery by C-STORE to a real peer (dcmtk storescp), with a destination that is down."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.reporting.outbox import write_report
from dicom_node.reporting.uids import ResultKey, derived_uid, report_uids
from dicom_node.sender import Sender
from dicom_node.settings import DestinationSettings, OutboundSettings
from storage import destinations, outbound, results
from storage.models import DestinationStatus, OutboundState
from storage.spool import Spool
from storage.worklist import InstanceRecord, record_instance
from tests.peers import StoreSCP, free_port
from tests.report_samples import WHEN, algorithm, dx_image, findings

POLICY = OutboundSettings(max_attempts=2, initial_retry_delay_seconds=30,
                          max_retry_delay_seconds=60, poll_interval_seconds=0.2,
                          probe_initial_delay_seconds=30, probe_max_delay_seconds=60)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def outbox(tmp_path):
    box = Spool(tmp_path / "outbox")
    box.prepare()
    return box


def _queue_result(database, outbox, destination_names):
    """A built SR and summary in the outbox, queued for each named destination."""
    study = generate_uid()
    evidence = [dx_image(study)]
    algo = algorithm()
    key = ResultKey.of(study_instance_uid=study, model_name=algo.name,
                       checkpoint_sha256s=algo.checkpoint_sha256s, profile="v1",
                       source_sop_instance_uids=[evidence[0].SOPInstanceUID])
    uids = report_uids(key, version=1, labels=[f.label for f in findings()])
    written = write_report(outbox, evidence=evidence, findings=findings(), algorithm=algo,
                           uids=uids, node_uid=derived_uid("n"), previous=[], when=WHEN)
    with database.sessions.begin() as session:
        study_id = record_instance(session, InstanceRecord(
            evidence[0].SOPInstanceUID, evidence[0].SeriesInstanceUID, study,
            evidence[0].SOPClassUID, "1.2.840.10008.1.2.1", "DX", "CHEST", "PA",
            f"{study}/x.dcm", 1, "MOD"), WHEN).study_id
        result_id = results.add_result(session, results.NewResult(
            study_id=study_id, study_instance_uid=study, result_key=key.digest(), version=1,
            supersedes_id=None, worker_id="w", model_name=algo.name,
            checkpoint_sha256s=algo.checkpoint_sha256s, catalogue_version="c",
            clinical_use=False, profile_version=1, aggregation="mean",
            sr_series_instance_uid=uids.sr.series_instance_uid,
            sr_sop_instance_uid=uids.sr.sop_instance_uid,
            summary_series_instance_uid=uids.summary.series_instance_uid,
            summary_sop_instance_uid=uids.summary.sop_instance_uid, findings=(), images=()),
            WHEN)
        outbound.enqueue(session, result_id, [
            outbound.NewDelivery(name, obj.kind, study, obj.sop_instance_uid, obj.sop_class_uid,
                                 obj.relative_path)
            for name in destination_names for obj in written
        ], WHEN)
    return written


def _destination(name, port, ae="STORESCP"):
    return DestinationSettings(name=name, ae_title=ae, host="127.0.0.1", port=port,
                               connect_timeout_seconds=5, network_timeout_seconds=10,
                               dimse_timeout_seconds=10)


def _sender(database, outbox, destinations, clock):
    return Sender(database=database, outbox_root=outbox.root, destinations=destinations,
                  calling_ae="AINODE", settings=POLICY, clock=clock)


def _received(peer: StoreSCP) -> dict[str, str]:
    """SOP Instance UID -> SOP Class UID of every file storescp wrote."""
    found = {}
    for path in peer.output_dir.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        found[ds.SOPInstanceUID] = ds.SOPClassUID
    return found


def _states(database):
    with database.read_only() as session:
        return {(d.destination, d.kind): d for d in outbound.list_deliveries(session)}


def test_sr_and_summary_arrive_once_and_are_marked_sent(database, outbox, storescp):
    written = _queue_result(database, outbox, ["pacs"])
    clock = Clock()
    sender = _sender(database, outbox, [_destination("pacs", storescp.port)], clock)

    assert sender.send_due("pacs") == 2
    clock.now += timedelta(days=1)
    assert sender.send_due("pacs") == 0  # SENT is final

    assert _received(storescp) == {o.sop_instance_uid: o.sop_class_uid for o in written}
    assert {d.state for d in _states(database).values()} == {OutboundState.SENT}


def test_down_destination_is_probed_and_its_objects_never_die(database, outbox):
    _queue_result(database, outbox, ["down"])
    clock = Clock()
    port = free_port()
    sender = _sender(database, outbox, [_destination("down", port)], clock)

    assert sender.send_due("down") == 2
    first = _states(database)[("down", "sr")]
    assert (first.state, first.attempts) == (OutboundState.PENDING, 1)
    assert first.last_error == f"connection refused by STORESCP@127.0.0.1:{port} " \
                               "(nothing listening on that port)"
    assert _destination_state(database, "down").state is DestinationStatus.DOWN
    assert sender.send_due("down") == 0  # the probe is not due yet

    for _ in range(20):  # far beyond any max_attempts: an outage never makes an object DEAD
        clock.now += timedelta(seconds=61)
        assert sender.send_due("down") == 0  # a failed C-ECHO probe, no C-STORE
    still = _states(database)[("down", "sr")]
    assert (still.state, still.attempts) == (OutboundState.PENDING, 1)
    assert _destination_state(database, "down").failures == 21


def _destination_state(database, name):
    with database.read_only() as session:
        return destinations.get(session, name)


def test_retry_after_the_peer_comes_up_delivers_exactly_once(database, outbox, tmp_path):
    port = free_port()
    written = _queue_result(database, outbox, ["late"])
    clock = Clock()
    sender = _sender(database, outbox, [_destination("late", port)], clock)
    sender.send_due("late")  # DOWN now
    clock.now += timedelta(seconds=3600)

    peer = StoreSCP(tmp_path / "late", port=port).start()
    try:
        assert sender.send_due("late") == 1  # the probe succeeds: UP, everything due
        assert _destination_state(database, "late").state is DestinationStatus.UP
        assert sender.send_due("late") == 2
        assert sender.send_due("late") == 0
        assert sorted(_received(peer)) == sorted(o.sop_instance_uid for o in written)
        assert len(list(peer.output_dir.iterdir())) == 2
        assert {d.last_error for d in _states(database).values()} == {None}
    finally:
        peer.stop()


def test_running_sender_delivers_to_the_live_destination_while_another_is_down(
    database, outbox, storescp
):
    _queue_result(database, outbox, ["pacs", "down"])
    sender = _sender(database, outbox, [_destination("pacs", storescp.port),
                                        _destination("down", free_port())],
                     lambda: datetime.now(UTC))
    sender.start()
    try:
        sender.wake()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = _states(database)
            if states[("pacs", "sr")].state is OutboundState.SENT and \
                    states[("pacs", "summary")].state is OutboundState.SENT:
                break
            time.sleep(0.1)
    finally:
        sender.stop()
    states = _states(database)
    assert states[("pacs", "summary")].state is OutboundState.SENT
    assert states[("down", "sr")].state is OutboundState.PENDING
    assert states[("down", "sr")].attempts >= 1
    assert len(_received(storescp)) == 2
