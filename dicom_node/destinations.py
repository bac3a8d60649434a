"""The service layer for destinations and re-sending, shared by the CLI and any console:
what each configured destination's state is (with its queue counts), a C-ECHO in words, and
queueing a study's current result again. No SQL here either: storage does the queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from dicom_node.outcomes import Outcome
from dicom_node.settings import DestinationSettings, Settings
from storage import destinations as destination_states
from storage import outbound
from storage.db import Database
from storage.models import DestinationStatus


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


def overview(settings: Settings, database: Database) -> list[DestinationOverview]:
    """Every configured destination with its state and PENDING/DEAD/SENT counts, in
    configuration order. A destination the node has not yet contacted (no delivery, no probe)
    shows as "not contacted": saying "up" would claim a success that never happened."""
    with database.read_only() as session:
        states = destination_states.list_states(session)
        counts = outbound.destination_counts(session)
    rows = []
    for destination in settings.destinations:
        state = states.get(destination.name)
        count = counts.get(destination.name, outbound.DestinationCounts())
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
) -> list[int]:
    """Queue the study's current SR, summary and attention-map overlays again for the named
    destinations (default: every configured one), as each destination's send_sr, send_summary
    and send_heat_maps allow. Even objects a destination acknowledged go again: this is the
    explicit admin act. Returns the
    delivery ids queued; raises UnknownDestination or storage.outbound.OutboundError."""
    targets = [find(settings, n) for n in names] if names else list(settings.destinations)
    if not targets:
        raise UnknownDestination("no destinations are configured")
    wanted = {d.name: _kinds(d) for d in targets}
    with database.sessions.begin() as session:
        return outbound.resend(session, study_instance_uid, wanted, now)


def _kinds(destination: DestinationSettings) -> set[str]:
    return {kind for kind, on in (("sr", destination.send_sr),
                                  ("summary", destination.send_summary),
                                  ("heatmap", destination.send_heat_maps)) if on}
