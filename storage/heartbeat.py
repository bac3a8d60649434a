"""Process heartbeats in the work list: which node processes run, since when, when each last
beat and how far its model got. Keyed "host:pid", so processes on several hosts share one
database without stepping on each other's rows. Functions take the caller's Session and a
timezone-aware `now`; they never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storage.models import ProcessHeartbeat
from storage.views import HeartbeatView


@dataclass(frozen=True)
class Beat:
    """What one process reports about itself."""

    host: str
    pid: int
    role: str  # serve | worker
    started_at: datetime
    model_state: str  # off | loading | loaded | missing | corrupt | failed
    model_error: str | None = None

    @property
    def process_id(self) -> str:
        return f"{self.host}:{self.pid}"


def beat(session: Session, report: Beat, now: datetime) -> None:
    """Insert or refresh the row of `report`'s process with beat_at = `now`."""
    row = session.get(ProcessHeartbeat, report.process_id, populate_existing=True)
    if row is None:
        row = ProcessHeartbeat(process_id=report.process_id)
        session.add(row)
    row.host, row.pid, row.role = report.host, report.pid, report.role
    row.started_at, row.beat_at = report.started_at, now
    row.model_state, row.model_error = report.model_state, report.model_error


def remove(session: Session, process_ids: Sequence[str]) -> int:
    """Delete the rows of `process_ids` (a clean shutdown, or processes known to be gone)."""
    if not process_ids:
        return 0
    result = session.execute(
        delete(ProcessHeartbeat).where(ProcessHeartbeat.process_id.in_(list(process_ids)))
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def list_heartbeats(session: Session) -> list[HeartbeatView]:
    """Every recorded process, the most recent beat first."""
    rows = session.scalars(select(ProcessHeartbeat).order_by(ProcessHeartbeat.beat_at.desc()))
    return [
        HeartbeatView(r.process_id, r.host, r.pid, r.role, r.started_at, r.beat_at,
                      r.model_state, r.model_error)
        for r in rows
    ]


def last_beats(session: Session) -> dict[str, datetime]:
    """When each recorded process ("host:pid") last beat."""
    rows = session.execute(select(ProcessHeartbeat.process_id, ProcessHeartbeat.beat_at))
    return {process_id: beat_at for process_id, beat_at in rows}
