"""The service layer for destinations and re-sending, shared by the CLI and any console:
what each configured destination's state is (with its queue counts), a C-ECHO in words, and
queueing a study's current result again. No SQL here either: storage does the queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from dicom_node.settings import DestinationSettings, Settings
from storage.reader import WorkListReader
from storage.states import DestinationStatus
from storage.views import DestinationCounts

if TYPE_CHECKING:  # SQLAlchemy and pynetdicom: not for `status` and `destinations list`
    from dicom_node.audit import Actor
    from dicom_node.outcomes import Outcome
    from storage.db import Database


class UnknownDestination(ValueError):
    """A destination name that is not in the configuration."""


@dataclass(frozen=True)
class DestinationOverview:
    name: str
    address: str  # AE@host:port
    state: str  # up | down | refusing
    since: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    next_probe_at: datetime | None
    pending: int
    dead: int
    sent: int
    oldest_pending_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def find(settings: Settings, name: str) -> DestinationSettings:
    """The configured destination `name`; UnknownDestination (naming those known) if none."""
    for destination in settings.destinations:
        if destination.name == name:
            return destination
    known = ", ".join(d.name for d in settings.destinations) or "none configured"
    raise UnknownDestination(f"no destination named {name!r} (known: {known})")


NOT_CONTACTED = "not contacted"


def overview(settings: Settings, reader: WorkListReader) -> list[DestinationOverview]:
    """Every configured destination with its state and PENDING/DEAD/SENT counts, in
    configuration order. A destination the node has not yet contacted (no delivery, no probe)
    shows as "not contacted": saying "up" would claim a success that never happened."""
    states = reader.destination_states()
    counts = reader.destination_counts()
    rows = []
    for destination in settings.destinations:
        state = states.get(destination.name)
        count = counts.get(destination.name, DestinationCounts())
        rows.append(DestinationOverview(
            name=destination.name,
            address=f"{destination.ae_title}@{destination.host}:{destination.port}",
            state=state.state.value.lower() if state else NOT_CONTACTED,
            since=state.since if state else None,
            last_success_at=state.last_success_at if state else None,
            last_error=state.last_error if state and state.state is not DestinationStatus.UP
            else None,
            next_probe_at=state.next_probe_at if state else None,
            pending=count.pending, dead=count.dead, sent=count.sent,
            oldest_pending_at=count.oldest_pending_at,
        ))
    return rows


def overview_of(settings: Settings, database: Database) -> list[DestinationOverview]:
    """overview() over the node's open work list (the console's Destinations page)."""
    from storage.session_reader import SessionReader

    with database.read_only() as session:
        return overview(settings, SessionReader(session))


def echo(settings: Settings, name: str) -> Outcome:
    """C-ECHO the configured destination `name` with the node's AE title and the
    destination's timeouts. Raises UnknownDestination."""
    from dicom_node.sender import echo_destination  # pynetdicom: not for `status` (start-up time)

    return echo_destination(find(settings, name), settings.node.ae_title)


def resend(
    settings: Settings,
    database: Database,
    study_instance_uid: str,
    now: datetime,
    names: Sequence[str] = (),
    *,
    actor: Actor,
) -> list[int]:
    """Queue the study's current SR, summary, text report and attention-map overlays again for
    the named destinations (default: every configured one), as each destination's send_sr,
    send_summary, send_text_report and send_heat_maps allow. Even objects a destination
    acknowledged go again: this is the explicit admin act, audited as "study.resend" by
    `actor`. Returns the delivery ids queued; raises UnknownDestination or
    storage.outbound.OutboundError."""
    from storage import outbound

    targets = [find(settings, n) for n in names] if names else list(settings.destinations)
    if not targets:
        raise UnknownDestination("no destinations are configured")
    wanted = {d.name: _kinds(d) for d in targets}
    with database.sessions.begin() as session:
        queued = outbound.resend(session, study_instance_uid, wanted, now)
        _audit().record(session, actor, "study.resend", study_instance_uid,
                        after={"destinations": sorted(wanted), "deliveries": queued}, now=now)
        return queued


def retry_deliveries(
    settings: Settings, database: Database, now: datetime, *, actor: Actor,
    ids: Sequence[int] = (), all_dead: bool = False, destination: str | None = None,
) -> list[int]:
    """Send deliveries again now with a fresh set of attempts: the delivery `ids` and, with
    `all_dead`, every DEAD one (only `destination`'s when given; it must be configured).
    Audited by `actor` as "outbound.retry" when anything was queued (before: the states,
    after: PENDING). Returns the ids; raises UnknownDestination or
    storage.outbound.OutboundError."""
    from storage import outbound

    if destination is not None:
        find(settings, destination)
    with database.sessions.begin() as session:
        retried = outbound.retry(session, now, ids=ids, all_dead=all_dead,
                                 destination=destination)
        if retried:
            _audit().record(session, actor, "outbound.retry", destination or "deliveries",
                            before={"dead_only": all_dead and not ids},
                            after={"state": "PENDING", "deliveries": retried}, now=now)
        return retried


def _kinds(destination: DestinationSettings) -> set[str]:
    return {kind for kind, on in (("sr", destination.send_sr),
                                  ("summary", destination.send_summary),
                                  ("text", destination.send_text_report),
                                  ("heatmap", destination.send_heat_maps)) if on}


def _audit():  # dicom_node.audit imports SQLAlchemy: only for changes
    from dicom_node import audit

    return audit
