"""What readers of the work list get back: plain frozen dataclasses, one per kind of row, with
no SQLAlchemy behind them, so that the reports of `status` and `studies list` can be built
without importing it (storage.sqlite_reader). Each field is named after its column; both
readers (storage.reader) fill a view from the columns of the same names.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from storage.states import DestinationStatus, OutboundState, StudyState

S = TypeVar("S", bound=StrEnum)


@dataclass(frozen=True)
class StudySummary:
    """A row of `study` for reports (`studies list|show`, `status`)."""

    study_instance_uid: str
    state: StudyState
    instance_count: int
    bytes_total: int
    first_arrival_at: datetime
    last_arrival_at: datetime
    state_changed_at: datetime
    attempts: int
    worker_id: str | None
    lease_until: datetime | None
    last_error: str | None
    skip_reason: str | None
    reopened_count: int
    not_before: datetime | None  # a QUEUED study retried after a transient error waits until
    purged_at: datetime | None = None  # retention deleted its files (see storage.retention)
    purge_reason: str | None = None
    purged_files: int | None = None
    purged_bytes: int | None = None


@dataclass(frozen=True)
class InstanceSummary:
    """A row of `instance` for reports."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    spool_path: str
    size_bytes: int
    received_at: datetime
    calling_ae_title: str | None


@dataclass(frozen=True)
class DestinationCounts:
    """One destination's outbound rows by state, and when its oldest PENDING one was queued."""

    pending: int = 0
    sent: int = 0
    dead: int = 0
    oldest_pending_at: datetime | None = None


@dataclass(frozen=True)
class DestinationView:
    """A row of `destination_state` (no row: never contacted)."""

    name: str
    state: DestinationStatus
    since: datetime | None
    failures: int
    next_probe_at: datetime | None
    last_success_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


@dataclass(frozen=True)
class HeartbeatView:
    """A row of `heartbeat`: one node process, keyed "host:pid"."""

    process_id: str
    host: str
    pid: int
    role: str
    started_at: datetime
    beat_at: datetime
    model_state: str
    model_error: str | None


# --- assembling query results: shared by both readers ---------------------------------------


def counts_by_state(states: type[S], rows: Iterable[tuple[str, int]]) -> dict[S, int]:
    """{state: count} with every state present (0 where no row), from (state, count) rows."""
    counts = dict.fromkeys(states, 0)
    for state, count in rows:
        counts[states(state)] = count
    return counts


def destination_counts(
    rows: Iterable[tuple[str, str, int, Any]],
) -> dict[str, DestinationCounts]:
    """Per destination, from (destination, state, count, min(created_at)) rows of `outbound`
    grouped by destination and state."""
    found: dict[str, dict[str, Any]] = {}
    for name, state, count, oldest in rows:
        entry = found.setdefault(name, {})
        entry[OutboundState(state).value.lower()] = count
        if OutboundState(state) is OutboundState.PENDING:
            entry["oldest_pending_at"] = utc(oldest)
    return {name: DestinationCounts(**values) for name, values in found.items()}


def utc(value: datetime | str | None) -> datetime | None:
    """A work-list time as an aware UTC datetime. SQLite keeps times as naive UTC text
    ("2026-11-29 20:08:12.123456"): an aggregate such as min() over them comes back as that
    text even through SQLAlchemy."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
