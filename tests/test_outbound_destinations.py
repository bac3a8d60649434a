"""Outbound that follows the destination (issue 11 section 1): outcomes in words, refusals
from a pynetdicom stand-in PACS, a real Orthanc that is down longer than the whole probe
schedule, a sender killed mid-batch, and the admin commands `destinations list|echo` and
`outbound resend`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydicom.uid import generate_uid
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.outcomes import (
    Answered,
    Lost,
    NoContext,
    Rejected,
    Unreachable,
    Unreadable,
    Verdict,
    classify,
)
from dicom_node.processes import gone_holders
from dicom_node.sender import Sender
from dicom_node.settings import OutboundSettings
from storage import destinations, outbound
from storage.db import open_database
from storage.models import DestinationStatus, OutboundState
from storage.spool import Spool
from tests.outbound_samples import Clock, StandInPACS, destination, queue_result
from tests.peers import REPO_ROOT, OrthancPeer, free_port

SR = "1.2.840.10008.5.1.4.1.1.88.33"
PACS = "PACS@127.0.0.1:4242"
SETTINGS = OutboundSettings(max_attempts=1, initial_retry_delay_seconds=30,
                            max_retry_delay_seconds=60, probe_initial_delay_seconds=30,
                            probe_max_delay_seconds=60, poll_interval_seconds=0.2)
runner = CliRunner()


@pytest.mark.parametrize(
    ("event", "verdict", "words"),
    [
        (Answered(0x0000), Verdict.OK, "stored"),
        (Answered(0xB000), Verdict.OK, "stored with Warning: Coercion of data elements"),
        (Answered(0x0110, "disk hiccup"), Verdict.RETRY,
         "C-STORE answered Processing Failure (0x0110): disk hiccup"),
        (Answered(0xFE00), Verdict.RETRY, "Cancel (0xFE00)"),
        (Answered(0xA700), Verdict.REFUSING, "Refused: Out of Resources (0xA700)"),
        (Answered(0xA7FF), Verdict.REFUSING, "Refused: Out of Resources (0xA7FF)"),
        (Answered(0xA900), Verdict.DEAD, "Error: Data Set Does Not Match SOP Class (0xA900)"),
        (Answered(0xA9FF), Verdict.DEAD, "(0xA9FF)"),
        (Answered(0xC000), Verdict.DEAD, "Error: Cannot Understand (0xC000)"),
        (Answered(0xCFFF), Verdict.DEAD, "Error: Cannot Understand (0xCFFF)"),
        (Answered(0x0122), Verdict.DEAD, "Refused: SOP Class Not Supported (0x0122)"),
        (Answered(0x0124), Verdict.RETRY_LIMITED, "Refused: Not Authorized (0x0124)"),
        (Answered(0xD123), Verdict.RETRY_LIMITED, "an unknown failure status (0xD123)"),
        (Unreachable(PACS, "refused"), Verdict.DOWN,
         f"connection refused by {PACS} (nothing listening on that port)"),
        (Unreachable(PACS, "timeout", 5), Verdict.DOWN,
         f"no connection to {PACS} within 5 s (timed out)"),
        (Unreachable(PACS, "aborted", 5), Verdict.DOWN,
         f"association with {PACS} aborted or not answered within 5 s"),
        (Unreachable(PACS, "No route to host"), Verdict.DOWN, "No route to host"),
        (Lost(PACS), Verdict.DOWN, "ended before the C-STORE response"),
        (Rejected(PACS, 1, 1, 7), Verdict.REFUSING,
         (f"association rejected by {PACS}: called AE title not recognised (rejected "
          "permanently, service user); check the destination's ae_title")),
        (Rejected(PACS, 1, 1, 3), Verdict.REFUSING, "calling AE title not recognised"),
        (Rejected(PACS, 2, 3, 1), Verdict.REFUSING,
         "temporary congestion (rejected transiently, service provider (presentation))"),
        (NoContext(PACS, SR), Verdict.DEAD,
         f"{PACS} accepted no presentation context for Comprehensive SR Storage ({SR})"),
        (NoContext(PACS, "1.2.3.4"), Verdict.DEAD, "presentation context for 1.2.3.4"),
        (Unreadable("a/b.dcm", "No such file"), Verdict.DEAD,
         "outbox file a/b.dcm cannot be read: No such file"),
    ],
)
def test_classify_says_what_happened_and_what_to_do(event, verdict, words):
    outcome = classify(event)
    assert outcome.verdict is verdict
    assert words in outcome.message


def test_gone_holders_are_dead_pids_of_this_host_and_our_own():
    alive = os.getppid()
    dead = _dead_pid()
    holders = [f"h1:{alive}", f"h1:{dead}", f"h1:{os.getpid()}", f"other:{dead}", "h1:x"]
    assert gone_holders(holders, "h1", os.getpid()) == [f"h1:{dead}", f"h1:{os.getpid()}"]


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def outbox(tmp_path):
    box = Spool(tmp_path / "outbox")
    box.prepare()
    return box


def _sender(database, outbox, dest, clock, settings=SETTINGS):
    return Sender(database=database, outbox_root=outbox.root, destinations=[dest],
                  calling_ae="AINODE", settings=settings, clock=clock)


def _rows(database):
    with database.read_only() as session:
        return {d.kind: d for d in outbound.list_deliveries(session)}


def _state(database, name):
    with database.read_only() as session:
        return destinations.get(session, name)


def test_sr_alone_to_a_pacs_without_sr_storage_is_dead_at_once_with_the_class_named(
    database, outbox
):
    pacs = StandInPACS(sop_classes=[SecondaryCaptureImageStorage]).start()
    try:
        queue_result(database, outbox, ["pacs"], kinds=("sr",))
        sender = _sender(database, outbox, destination("pacs", pacs.port), Clock())
        assert sender.send_due("pacs") == 1
        assert sender.send_due("pacs") == 0
    finally:
        pacs.stop()
    sr = _rows(database)["sr"]
    assert (sr.state, sr.attempts) == (OutboundState.DEAD, 1)
    assert sr.last_error == (f"STANDIN@127.0.0.1:{pacs.port} accepted no presentation "
                             f"context for Comprehensive SR Storage ({SR})")
    assert _state(database, "pacs") is None  # the PACS is fine; the object is not


def test_processing_failure_is_retried_on_the_objects_backoff_then_sent(database, outbox):
    pacs = StandInPACS(answer=lambda _uid, n: 0x0110 if n == 1 else 0x0000).start()
    clock = Clock()
    try:
        written = queue_result(database, outbox, ["pacs"])
        sender = _sender(database, outbox, destination("pacs", pacs.port), clock)
        assert sender.send_due("pacs") == 2
        sr = _rows(database)["sr"]
        assert (sr.state, sr.attempts) == (OutboundState.PENDING, 1)  # not DEAD: max_attempts 1
        assert sr.last_error == "C-STORE answered Processing Failure (0x0110)"
        assert sr.next_attempt_at == clock.now + timedelta(seconds=30)
        assert sender.send_due("pacs") == 0  # waiting out its own backoff
        clock.now += timedelta(seconds=30)
        assert sender.send_due("pacs") == 2
    finally:
        pacs.stop()
    rows = _rows(database)
    assert {(r.state, r.attempts, r.last_error) for r in rows.values()} == {
        (OutboundState.SENT, 2, None)}
    assert sorted(pacs.stored) == sorted(o.sop_instance_uid for o in written)
    assert _state(database, "pacs").state is DestinationStatus.UP


def test_wrong_called_ae_is_refusing_with_the_reason_in_outbound_list(tmp_path, outbox):
    pacs = StandInPACS(ae_title="RIGHT", require_called_aet=True).start()
    config = _config(tmp_path, "pacs", pacs.port, ae="WRONG")
    database = open_database(f"sqlite:///{tmp_path / 'data' / 'worklist.sqlite'}")
    clock = Clock()
    try:
        queue_result(database, outbox, ["pacs"])
        sender = _sender(database, outbox, destination("pacs", pacs.port, ae="WRONG"), clock)
        assert sender.send_due("pacs") == 2
        clock.now += timedelta(seconds=31)
        assert sender.send_due("pacs") == 0  # the probe is rejected too
    finally:
        pacs.stop()
        database.dispose()
    listed = runner.invoke(app, ["outbound", "list", "--config", str(config), "--json"])
    reason = (f"association rejected by WRONG@127.0.0.1:{pacs.port}: called AE title not "
              "recognised (rejected permanently, service user); check the destination's "
              "ae_title")
    assert {(r["state"], r["attempts"], r["last_error"]) for r in json.loads(listed.stdout)} == {
        ("PENDING", 1, reason)}
    shown = runner.invoke(app, ["destinations", "list", "--config", str(config), "--json"])
    (row,) = json.loads(shown.stdout)
    assert (row["state"], row["pending"], row["dead"], row["last_error"]) == (
        "refusing", 2, 0, reason)


def _config(tmp_path, name, port, ae="STANDIN"):
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n[logging]\nlevel = "WARNING"\n'
        f'[[destinations]]\nname = "{name}"\nae_title = "{ae}"\nhost = "127.0.0.1"\n'
        f"port = {port}\nconnect_timeout_seconds = 3\n"
    )
    return path


@pytest.mark.slow
def test_orthanc_down_longer_than_the_probe_schedule_gets_everything_once(tmp_path, database,
                                                                           outbox):
    orthanc = OrthancPeer(tmp_path / "orthanc")
    settings = OutboundSettings(max_attempts=1, probe_initial_delay_seconds=0.2,
                                probe_max_delay_seconds=1, poll_interval_seconds=0.5)
    written = [o for _ in range(3) for o in queue_result(database, outbox, ["pacs"])]
    sender = _sender(database, outbox, destination("pacs", orthanc.dicom_port, ae="ORTHANC"),
                     lambda: datetime.now(UTC), settings)
    sender.start()
    try:
        time.sleep(4)  # 0.2 + 0.4 + 0.8 + 1 + 1 ...: past the whole schedule, at its cap
        assert _state(database, "pacs").state is DestinationStatus.DOWN
        assert _state(database, "pacs").failures >= 5
        assert _counts(database)[OutboundState.PENDING] == 6
        orthanc.start()
        up = time.monotonic()
        while time.monotonic() - up < 30 and _counts(database)[OutboundState.SENT] < 6:
            time.sleep(0.1)
        delay = time.monotonic() - up
        print(f"PACS up -> last delivery: {delay:.2f} s")
        assert _counts(database) == {OutboundState.SENT: 6, OutboundState.PENDING: 0,
                                     OutboundState.DEAD: 0}
        assert delay < 30
        assert orthanc.instance_count() == 6  # exactly one copy of each SR and summary
        stored = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                  for i in orthanc.get("/instances")}
        assert stored == {o.sop_instance_uid for o in written}
    finally:
        sender.stop()
        orthanc.stop()
    with database.read_only() as session:
        sent = sorted(outbound.list_deliveries(session), key=lambda d: d.id)
    assert [d.sent_at for d in sent] == sorted(d.sent_at for d in sent)  # oldest first


def _counts(database):
    with database.read_only() as session:
        return outbound.state_counts(session)


KILLED_SENDER = """
import sys
from datetime import UTC, datetime
from dicom_node.sender import Sender
from dicom_node.settings import DestinationSettings, OutboundSettings
from storage.db import open_database
db = open_database(sys.argv[1])
dest = DestinationSettings(name="pacs", ae_title="STANDIN", host="127.0.0.1",
                           port=int(sys.argv[3]))
Sender(database=db, outbox_root=sys.argv[2], destinations=[dest], calling_ae="AINODE",
       settings=OutboundSettings(), clock=lambda: datetime.now(UTC)).send_due("pacs")
"""


def test_kill_9_mid_batch_never_resends_what_the_pacs_acknowledged(tmp_path, outbox):
    url = f"sqlite:///{tmp_path / 'worklist.sqlite'}"
    database = open_database(url)
    written = [o for _ in range(3) for o in queue_result(database, outbox, ["pacs"])]
    third = written[2].sop_instance_uid
    stalled = threading.Event()
    release = threading.Event()

    def answer(uid, n):
        if uid == third and n == 1:  # hold the third C-STORE until the sender is killed
            stalled.set()
            release.wait(30)
            return 0x0110
        return 0x0000

    pacs = StandInPACS(answer=answer).start()
    process = subprocess.Popen([sys.executable, "-c", KILLED_SENDER, url, str(outbox.root),
                                str(pacs.port)], cwd=REPO_ROOT,
                               env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert stalled.wait(60), "the sender never reached the third object"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        release.set()
        with database.read_only() as session:
            rows = sorted(outbound.list_deliveries(session), key=lambda d: d.id)
        assert [r.state for r in rows[:2]] == [OutboundState.SENT] * 2  # committed per response
        assert rows[2].claimed_by == f"{os.uname().nodename}:{process.pid}"

        sender = Sender(database=database, outbox_root=outbox.root,
                        destinations=[destination("pacs", pacs.port)], calling_ae="AINODE",
                        settings=SETTINGS, clock=lambda: datetime.now(UTC))
        assert sender.release_gone_claims() == 4  # at once, not after the 300 s lease
        while sender.send_due("pacs"):
            pass
    finally:
        release.set()
        if process.poll() is None:
            process.kill()
        pacs.stop()
    assert _counts(database)[OutboundState.SENT] == 6
    assert pacs.received[written[0].sop_instance_uid] == 1
    assert pacs.received[written[1].sop_instance_uid] == 1
    assert pacs.received[third] == 2  # in flight, never acknowledged: sent again
    assert all(pacs.received[o.sop_instance_uid] == 1 for o in written[3:])
    database.dispose()


def test_destinations_echo_answers_in_words_and_exits_non_zero_when_down(tmp_path):
    pacs = StandInPACS().start()
    try:
        up = runner.invoke(app, ["destinations", "echo", "pacs", "--config",
                                 str(_config(tmp_path, "pacs", pacs.port))])
    finally:
        pacs.stop()
    assert up.exit_code == 0, up.output
    assert f"pacs: ok: STANDIN@127.0.0.1:{pacs.port} answered C-ECHO with Success" in up.stdout
    port = free_port()
    down = runner.invoke(app, ["destinations", "echo", "pacs", "--json", "--config",
                               str(_config(tmp_path, "pacs", port))])
    assert down.exit_code == 1
    assert json.loads(down.stdout)["message"] == (
        f"connection refused by STANDIN@127.0.0.1:{port} (nothing listening on that port)")
    unknown = runner.invoke(app, ["destinations", "echo", "archive", "--config",
                                  str(_config(tmp_path, "pacs", port))])
    assert unknown.exit_code == 2
    assert "no destination named 'archive' (known: pacs)" in unknown.output


def test_resend_queues_the_current_result_again_even_after_it_was_sent(tmp_path, outbox):
    pacs = StandInPACS().start()
    config = _config(tmp_path, "pacs", pacs.port)
    with config.open("a") as f:  # a second PACS added later, without summary images
        f.write(f'[[destinations]]\nname = "archive"\nae_title = "STANDIN"\n'
                f'host = "127.0.0.1"\nport = {pacs.port}\nsend_summary = false\n')
    database = open_database(f"sqlite:///{tmp_path / 'data' / 'worklist.sqlite'}")
    try:
        written = queue_result(database, outbox, ["pacs"])
        study = json.loads(runner.invoke(app, ["outbound", "list", "--config", str(config),
                                               "--json"]).stdout)[0]["study_instance_uid"]
        sender = _sender(database, outbox, destination("pacs", pacs.port),
                         lambda: datetime.now(UTC))
        assert sender.send_due("pacs") == 2
        resent = runner.invoke(app, ["outbound", "resend", study, "--config", str(config),
                                     "--json"])
        assert resent.exit_code == 0, resent.output
        assert len(json.loads(resent.stdout)["queued"]) == 3  # sr+summary to pacs, sr to archive
        rows = _rows_by(database)
        assert rows[("pacs", "sr")].state is OutboundState.PENDING
        assert rows[("pacs", "sr")].last_error.startswith(
            "resend requested by an administrator (was SENT at ")
        assert ("archive", "summary") not in rows
        assert sender.send_due("pacs") == 2
    finally:
        pacs.stop()
        database.dispose()
    assert sorted(pacs.received.values()) == [2, 2]
    assert {o.sop_instance_uid for o in written} == set(pacs.received)
    for args, message in (
        (["outbound", "resend", generate_uid()], "has no result to send"),
        (["outbound", "resend", study, "--destination", "nowhere"], "no destination named"),
    ):
        failed = runner.invoke(app, [*args, "--config", str(config)])
        assert failed.exit_code == 2
        assert message in failed.output and "Traceback" not in failed.output


def _rows_by(database):
    with database.read_only() as session:
        return {(d.destination, d.kind): d for d in outbound.list_deliveries(session)}


def test_out_of_resources_makes_the_destination_refusing_until_space_returns(database, outbox):
    full = {"disk": True}
    pacs = StandInPACS(answer=lambda _uid, _n: 0xA700 if full["disk"] else 0x0000).start()
    clock = Clock()
    try:
        queue_result(database, outbox, ["pacs"])
        sender = _sender(database, outbox, destination("pacs", pacs.port), clock)
        assert sender.send_due("pacs") == 1  # the batch stops at the first refusal
        state = _state(database, "pacs")
        assert (state.state, state.last_error) == (
            DestinationStatus.REFUSING, "C-STORE answered Refused: Out of Resources (0xA700)")
        clock.now += timedelta(seconds=30)
        assert sender.send_due("pacs") == 1  # C-ECHO answers: up again, try the oldest
        assert sender.send_due("pacs") == 1  # still full
        assert _state(database, "pacs").failures == 2  # the probe did not reset the backoff
        full["disk"] = False
        clock.now += timedelta(seconds=60)
        while sender.send_due("pacs"):
            pass
    finally:
        pacs.stop()
    rows = _rows(database)
    assert {r.state for r in rows.values()} == {OutboundState.SENT}
    assert rows["sr"].attempts == 3 and rows["summary"].attempts == 1


def test_a_destination_never_contacted_is_not_shown_as_up(tmp_path):
    config = _config(tmp_path, "pacs", free_port())
    shown = runner.invoke(app, ["destinations", "list", "--config", str(config), "--json"])
    assert shown.exit_code == 0, shown.output
    (row,) = json.loads(shown.stdout)
    assert (row["state"], row["last_success_at"], row["pending"]) == ("not contacted", None, 0)
