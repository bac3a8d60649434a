"""Delivery by C-STORE to a real peer (dcmtk storescp), with a destination that is down."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pydicom
import pytest

from dicom_node.sender import Sender
from dicom_node.settings import DestinationSettings, OutboundSettings
from storage import destinations, outbound
from storage.models import DestinationStatus, OutboundState
from storage.spool import Spool
from tests.outbound_samples import Clock, queue_result
from tests.peers import StoreSCP, free_port

POLICY = OutboundSettings(max_attempts=2, initial_retry_delay_seconds=30,
                          max_retry_delay_seconds=60, poll_interval_seconds=0.2,
                          probe_initial_delay_seconds=30, probe_max_delay_seconds=60)


@pytest.fixture
def outbox(tmp_path):
    box = Spool(tmp_path / "outbox")
    box.prepare()
    return box


def _queue_result(database, outbox, destination_names):
    return queue_result(database, outbox, destination_names)


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
