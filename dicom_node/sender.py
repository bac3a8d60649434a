"""Delivering results: C-STORE of queued SRs and summary images to the configured destinations.

One thread per destination, so a destination that is down (or slow to time out) delays only its
own deliveries, never intake, inference or another destination. A thread wakes when the worker
queues a result (`wake()`), when the earliest retry or probe falls due, or every
`poll_interval_seconds` (which also picks up `dicom-node outbound retry|resend` from another
process).

Outbound follows the destination, not each object (see dicom_node.outcomes for the verdicts):
- up: due objects go oldest first, several in one association; each outcome is committed as
  its C-STORE response arrives, so a kill -9 mid-batch never re-sends what the PACS acknowledged.
- down or refusing (kept in the work list, storage.destinations): nothing is sent; the node
  probes with C-ECHO on a backoff of its own. The first success, probe or delivery, makes every
  pending object for the destination due at once. An outage never makes an object DEAD.
- An object the PACS fails for a reason that can pass (0x0110) waits out its own backoff; one
  that retrying cannot fix is DEAD at once, with its reason in words.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.orm import Session

from dicom_node.heartbeat import SWEEPS_PER_STALE_AGE, lease_stale_after_seconds
from dicom_node.logs import log_event
from dicom_node.outcomes import (
    Answered,
    Event,
    Lost,
    NoContext,
    Outcome,
    Rejected,
    Unreachable,
    Unreadable,
    Verdict,
    classify,
)
from dicom_node.processes import gone_holders, stale_holders
from dicom_node.settings import DestinationSettings, OutboundSettings
from storage import destinations as destination_states
from storage import heartbeat as heartbeats
from storage import outbound
from storage.db import Database, is_unavailable
from storage.models import DestinationStatus, OutboundState
from storage.outbound import Delivery

LOG = logging.getLogger(__name__)
BATCH_SIZE = 32


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff: initial, initial*multiplier, ... capped at max_delay_seconds. Objects use it
    after a failure answer; destinations use it (with the probe delays) while down."""

    max_attempts: int
    initial_delay_seconds: float
    max_delay_seconds: float
    multiplier: float = 2.0

    @classmethod
    def from_settings(cls, settings: OutboundSettings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            initial_delay_seconds=settings.initial_retry_delay_seconds,
            max_delay_seconds=settings.max_retry_delay_seconds,
            multiplier=settings.backoff_multiplier,
        )

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (>= 1)."""
        delay = self.initial_delay_seconds * self.multiplier ** max(failures - 1, 0)
        return min(delay, self.max_delay_seconds)

    def decide(self, attempts: int, verdict: Verdict) -> float | None:
        """Seconds until an object is tried again after `attempts` failed ones (this one
        included); None: DEAD. Only RETRY_LIMITED answers count towards max_attempts; an
        object-level RETRY is never DEAD and a DEAD verdict is DEAD at once."""
        if verdict is Verdict.DEAD:
            return None
        if verdict is Verdict.RETRY_LIMITED and attempts >= self.max_attempts:
            return None
        return self.delay(attempts)


StoreFunction = Callable[
    [DestinationSettings, str, Sequence[tuple[int, Path]], Callable[[int], bool]],
    Iterator[tuple[int, Outcome]],
]
EchoFunction = Callable[[DestinationSettings, str], Outcome]


def _address(destination: DestinationSettings) -> str:
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def _associate(
    destination: DestinationSettings, calling_ae: str, sop_classes: Sequence[str]
) -> Association:
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = destination.connect_timeout_seconds
    ae.acse_timeout = destination.connect_timeout_seconds
    ae.network_timeout = destination.network_timeout_seconds
    ae.dimse_timeout = destination.dimse_timeout_seconds
    for sop_class in sorted(set(sop_classes)):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    return ae.associate(destination.host, destination.port, ae_title=destination.ae_title)


def _not_established(assoc: Association, destination: DestinationSettings) -> Event | None:
    """Why an association was not established; None when every presentation context was
    refused (the caller names the SOP class per object)."""
    address = _address(destination)
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        return Rejected(address, int(primitive.result or 0), int(primitive.result_source or 0),
                        int(primitive.diagnostic or 0))
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        return None
    return Unreachable(address, _diagnose_connect(destination),
                       destination.connect_timeout_seconds)


def _diagnose_connect(destination: DestinationSettings) -> str:
    """pynetdicom logs, but does not return, why a connection failed: try once more to say it
    in words ("refused", "timeout", "aborted" when a connection is possible, or the OS's)."""
    try:
        with socket.create_connection((destination.host, destination.port),
                                      timeout=destination.connect_timeout_seconds):
            return "aborted"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return exc.strerror or str(exc)


def store_files(
    destination: DestinationSettings, calling_ae: str, files: Sequence[tuple[int, Path]],
    still_ours: Callable[[int], bool] = lambda key: True,
) -> Iterator[tuple[int, Outcome]]:
    """C-STORE each file to `destination` in one association, in the given order, yielding
    (key, Outcome) as each response arrives. An association that cannot be made yields the
    same destination outcome for every key; after a destination outcome mid-batch it stops
    (the rest were not attempted); a key for which `still_ours(key)` is False just before
    its C-STORE is skipped (not attempted). Closing the generator releases the association."""
    datasets: list[tuple[int, pydicom.Dataset]] = []
    for key, path in files:
        try:
            datasets.append((key, pydicom.dcmread(path)))
        except (OSError, ValueError) as exc:
            yield key, classify(Unreadable(str(path), str(exc)))
    if not datasets:
        return
    assoc = _associate(destination, calling_ae, [ds.SOPClassUID for _, ds in datasets])
    if not assoc.is_established:
        event = _not_established(assoc, destination)
        for key, ds in datasets:
            yield key, classify(event or NoContext(_address(destination), ds.SOPClassUID))
        return
    _no_delay(assoc)
    try:
        for key, ds in datasets:
            if not still_ours(key):
                continue
            outcome = classify(_store_one(assoc, ds, _address(destination)))
            yield key, outcome
            if outcome.verdict.about_destination:
                return
    finally:
        if assoc.is_established:
            assoc.release()


def _store_one(assoc: Association, ds: pydicom.Dataset, address: str) -> Event:
    try:
        status = assoc.send_c_store(ds)
    except ValueError:  # no accepted presentation context for this SOP class
        return NoContext(address, ds.SOPClassUID)
    except RuntimeError:  # the association ended under us
        return Lost(address)
    if not status or "Status" not in status:
        return Lost(address)
    return Answered(int(status.Status), str(status.get("ErrorComment", "")))


def echo_destination(destination: DestinationSettings, calling_ae: str) -> Outcome:
    """C-ECHO `destination` with the configured AE titles and timeouts; OK (reachable, with
    the round trip in words), DOWN or REFUSING."""
    start = time.perf_counter()
    assoc = _associate(destination, calling_ae, [Verification])
    if not assoc.is_established:
        event = _not_established(assoc, destination)
        if event is None:
            return Outcome(Verdict.OK, f"{_address(destination)} is reachable but does not "
                                       "accept Verification (C-ECHO)")
        return classify(event)
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    seconds = time.perf_counter() - start
    if status and "Status" in status and int(status.Status) == 0:
        return Outcome(Verdict.OK, f"{_address(destination)} answered C-ECHO with Success "
                                   f"in {seconds:.3f} s")
    if status and "Status" in status:
        return Outcome(Verdict.OK, f"{_address(destination)} is reachable; C-ECHO answered "
                                   f"0x{int(status.Status):04X}")
    return classify(Lost(_address(destination)))


def _no_delay(assoc: Association) -> None:
    """Turn off Nagle's algorithm on the association's socket. pynetdicom writes a C-STORE as
    several small PDUs; with Nagle on, each waits for the peer's delayed ACK (measured on
    loopback: a small SR took 0.094 s per C-STORE, 0.048 s without). Best effort: the socket
    is pynetdicom's internal attribute."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        log_event(LOG, "tcp_nodelay_failed", level=logging.DEBUG)


def sender_id() -> str:
    """This process as a claim holder: "host:pid" (the same form as worker ids)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class Sender:
    """The delivery component of a running node (`start`/`stop`, `wake` on a new result)."""

    name = "sender"

    def __init__(
        self,
        *,
        database: Database,
        outbox_root: Path,
        destinations: Sequence[DestinationSettings],
        calling_ae: str,
        settings: OutboundSettings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        store: StoreFunction = store_files,
        echo: EchoFunction = echo_destination,
        on_delivery: Callable[[str, str], None] = lambda destination, outcome: None,
        heartbeat_seconds: float = 5,
    ) -> None:
        self.database = database
        self.heartbeat_seconds = heartbeat_seconds  # [node] heartbeat_seconds: stale claims
        self._started_at = time.monotonic()  # or the end of the last database outage
        self._next_sweep = 0.0
        self.outbox_root = Path(outbox_root)
        self.destinations = {d.name: d for d in destinations}
        self.calling_ae = calling_ae
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self.probe_policy = RetryPolicy(
            0, settings.probe_initial_delay_seconds, settings.probe_max_delay_seconds,
            settings.backoff_multiplier)
        self.clock = clock
        self.store = store
        self.echo = echo
        # (destination, outcome) per attempt: "sent", "dead" or the verdict ("retry", "down"...)
        self.on_delivery = on_delivery
        self.id = sender_id()
        self._wake = {name: threading.Event() for name in self.destinations}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self.release_gone_claims(starting=True)
        self._stop.clear()
        for name in self.destinations:
            thread = threading.Thread(target=self._run, args=(name,), name=f"sender-{name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for event in self._wake.values():
            event.set()
        for thread in self._threads:
            thread.join(timeout=max(d.connect_timeout_seconds for d in self.destinations.values())
                        + 30)
        self._threads.clear()

    def wake(self) -> None:
        for event in self._wake.values():
            event.set()

    def release_gone_claims(self, starting: bool = False) -> int:
        """Rows claimed by a sender that is gone go back at once (a kill -9 left them claimed
        for `send_lease_seconds`): a sender of this host that no longer runs, or one on any
        host whose heartbeat is `lease_stale_after_seconds` old (judged once this sender has
        reached the database for that long); `starting`: also this process's own (an earlier
        process with the same pid). Returns how many."""
        host, pid = socket.gethostname(), os.getpid()
        stale_after = lease_stale_after_seconds(self.heartbeat_seconds)
        judge_beats = time.monotonic() - self._started_at >= stale_after
        with self.database.sessions.begin() as session:
            holders = outbound.claim_holders(session)
            gone = set(gone_holders(holders, host, pid, starting))
            if judge_beats and len(gone) < len(holders):
                gone |= set(stale_holders(holders, heartbeats.last_beats(session),
                                          self.clock() - timedelta(seconds=stale_after),
                                          pid, host))
            released = outbound.release_claims(session, sorted(gone))
        self._next_sweep = time.monotonic() + stale_after / SWEEPS_PER_STALE_AGE
        if released:
            log_event(LOG, "send_claims_released", deliveries=released, holders=gone)
        return released

    def _run(self, name: str) -> None:
        event = self._wake[name]
        while not self._stop.is_set():
            event.clear()
            try:
                if time.monotonic() >= self._next_sweep:
                    self.release_gone_claims()
                if self.send_due(name):
                    continue
                wait = self._seconds_until_due(name)
            except Exception as exc:  # noqa: BLE001  a database hiccup must not end the thread
                if is_unavailable(exc):  # claims nothing until the database is back
                    self._started_at = time.monotonic()  # heartbeats are judged anew after it
                    log_event(LOG, "sender_paused", level=logging.WARNING, destination=name,
                              error=f"{type(exc).__name__}"[:100])
                else:
                    log_event(LOG, "sender_pass_failed", level=logging.ERROR,
                              destination=name, exc_info=True)
                wait = self.settings.poll_interval_seconds
            event.wait(timeout=wait)

    def _seconds_until_due(self, name: str) -> float:
        with self.database.read_only() as session:
            state = destination_states.get(session, name)
            due = outbound.next_due_at(session, name)
        if state is not None and state.state is not DestinationStatus.UP:
            due = state.next_probe_at
        poll = self.settings.poll_interval_seconds
        if due is None:
            return poll
        return min(poll, max((due - self.clock()).total_seconds(), 0.05))

    def send_due(self, name: str) -> int:
        """One pass for one destination: probe it if it is down or refusing and its probe is
        due, else claim what is due (oldest first), send it and commit each outcome as it
        arrives. Returns how many deliveries were attempted (a successful probe counts 1, so a
        caller looping until 0 goes on to send)."""
        with self.database.read_only() as session:
            state = destination_states.get(session, name)
        if state is not None and state.state is not DestinationStatus.UP:
            if state.next_probe_at is not None and state.next_probe_at > self.clock():
                return 0
            return self.probe(name)
        with self.database.sessions.begin() as session:
            claimed = outbound.claim_due(session, name, self.clock(),
                                         self.settings.send_lease_seconds, BATCH_SIZE, self.id)
        if not claimed:
            return 0
        return self._send(self.destinations[name], claimed)

    def _send(self, destination: DestinationSettings, claimed: Sequence[Delivery]) -> int:
        by_id = {d.id: d for d in claimed}
        attempted: list[int] = []
        about_destination: Outcome | None = None
        files = [(d.id, self.outbox_root / d.file_path) for d in claimed]
        try:
            with closing(self.store(destination, self.calling_ae, files,
                                    self._still_ours)) as outcomes:
                for key, outcome in outcomes:
                    attempted.append(key)
                    self._record(destination, by_id[key], outcome)
                    if outcome.verdict.about_destination:
                        about_destination = about_destination or outcome
        except Exception as exc:  # noqa: BLE001  a socket or library error must not kill us
            about_destination = Outcome(Verdict.DOWN, f"sending to {_address(destination)} "
                                                      f"failed: {type(exc).__name__}: {exc}")
            log_event(LOG, "send_failed", level=logging.ERROR, destination=destination.name,
                      exc_info=True)
        with self.database.sessions.begin() as session:
            outbound.release(session, [i for i in by_id if i not in attempted], self.id)
        if about_destination is not None:
            self._destination_failed(destination, about_destination)
        return len(attempted)

    def _still_ours(self, delivery_id: int) -> bool:
        """Renew this sender's claim just before a C-STORE; False (skip it, log it) when the
        claim was taken back meanwhile: another sender may be sending the object."""
        with self.database.sessions.begin() as session:
            ours = outbound.keep_claim(session, delivery_id, self.id,
                                       self.settings.send_lease_seconds, self.clock())
        if not ours:
            log_event(LOG, "send_claim_lost", level=logging.WARNING, delivery_id=delivery_id)
        return ours

    def probe(self, name: str) -> int:
        """C-ECHO a destination that is down or refusing; on success it is up and every
        pending object for it is due now. Returns 1 on success, else 0."""
        destination = self.destinations[name]
        outcome = self.echo(destination, self.calling_ae)
        if outcome.verdict.about_destination:
            self._destination_failed(destination, outcome)
            return 0
        with self.database.sessions.begin() as session:
            self._destination_succeeded(session, destination, "C-ECHO")
        return 1

    def _record(self, destination: DestinationSettings, delivery: Delivery,
                outcome: Outcome) -> None:
        fields = {
            "destination": destination.name, "called_ae": destination.ae_title,
            "kind": delivery.kind, "sop_instance_uid": delivery.sop_instance_uid,
            "study_instance_uid": delivery.study_instance_uid,
        }
        now = self.clock()
        if outcome.verdict is Verdict.OK:
            first: list[bool] = []

            def sent(session: Session) -> None:
                first[:] = [outbound.mark_sent(session, delivery.id, now)]
                self._destination_succeeded(session, destination, "C-STORE")

            self._commit_despite_outage(sent, delivery)
            # "delivery_sent" once per object: a second sender's copy says that it was one
            log_event(LOG, "delivery_sent" if first[0] else "delivery_sent_again",
                      level=logging.INFO if first[0] else logging.WARNING,
                      detail=outcome.message, **fields)
            self.on_delivery(destination.name, "sent")
            return
        attempts = delivery.attempts + 1
        delay = 0.0 if outcome.verdict.about_destination else self.policy.decide(
            attempts, outcome.verdict)
        retry_at = None if delay is None else now + timedelta(seconds=delay)
        with self.database.sessions.begin() as session:
            state = outbound.mark_failed(session, delivery.id, outcome.message, retry_at, now)
        self.on_delivery(destination.name, "dead" if state is OutboundState.DEAD
                         else str(outcome.verdict))
        log_event(LOG, "delivery_failed", level=logging.WARNING, state=str(state),
                  verdict=str(outcome.verdict), attempts=attempts,
                  retry_in_seconds=None if outcome.verdict.about_destination else delay,
                  error=outcome.message, **fields)

    def _commit_despite_outage(self, work: Callable[[Session], None], delivery: Delivery) -> None:
        """Commit `work` (recording that the destination has an object), trying again while
        the database is unreachable: forgetting it would send the object a second time once
        the claim expires. Gives up only when the node stops (then it is sent again)."""
        wait = 0.5
        while True:
            try:
                with self.database.sessions.begin() as session:
                    work(session)
                return
            except Exception as exc:
                if not is_unavailable(exc) or self._stop.is_set():
                    raise
                log_event(LOG, "delivery_record_waiting", level=logging.WARNING,
                          sop_instance_uid=delivery.sop_instance_uid,
                          destination=delivery.destination, retry_in_seconds=wait)
                self._stop.wait(timeout=wait)
                wait = min(wait * 2, 5.0)

    def _destination_succeeded(self, session: Session, destination: DestinationSettings,
                               how: str) -> None:
        now = self.clock()
        if destination_states.record_success(session, destination.name, now,
                                             delivered=how == "C-STORE"):
            outbound.make_due(session, destination.name, now)
            counts = outbound.destination_counts(session).get(destination.name)
            log_event(LOG, "destination_up", destination=destination.name,
                      called_ae=destination.ae_title, by=how,
                      pending_now_due=counts.pending if counts else 0)

    def _destination_failed(self, destination: DestinationSettings, outcome: Outcome) -> None:
        status = (DestinationStatus.DOWN if outcome.verdict is Verdict.DOWN
                  else DestinationStatus.REFUSING)
        now = self.clock()
        with self.database.sessions.begin() as session:
            before = destination_states.get(session, destination.name)
            after = destination_states.record_failure(
                session, destination.name, status, outcome.message, now,
                lambda failures: timedelta(seconds=self.probe_policy.delay(failures)))
        changed = before is None or before.state is not status
        log_event(LOG, f"destination_{status.value.lower()}" if changed else "probe_failed",
                  level=logging.WARNING, destination=destination.name,
                  called_ae=destination.ae_title, error=outcome.message,
                  failures=after.failures,
                  next_probe_in_seconds=round((after.next_probe_at - now).total_seconds(), 3)
                  if after.next_probe_at else None)
