"""Destination state in the work list: up, down (unreachable) or refusing (it answers but
refuses), since when, the last success, the last error in words and when to probe it next.

A destination without a row has never failed and counts as up. Senders in several processes
may write the same row; the last writer wins, which is what a state that follows the newest
observation should do. Functions take the caller's Session and a timezone-aware `now`; they
never commit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import DestinationState, DestinationStatus
from storage.views import DestinationView


def get(session: Session, name: str) -> DestinationView | None:
    """The recorded state of `name` (None: never recorded, i.e. up)."""
    row = session.get(DestinationState, name)
    return None if row is None else _view(row)


def list_states(session: Session) -> dict[str, DestinationView]:
    return {row.name: _view(row) for row in session.scalars(select(DestinationState))}


def record_success(session: Session, name: str, now: datetime, *, delivered: bool) -> bool:
    """A delivery or probe succeeded: UP. Only a delivery resets the failure count: a PACS that
    answers C-ECHO but refuses storage (out of resources) keeps its probe backoff growing.
    Returns True when the destination was not up before (the caller then makes its pending
    objects due)."""
    _ensure(session, name, now)
    row = session.get(DestinationState, name, populate_existing=True)
    came_back = row is not None and row.state is not DestinationStatus.UP
    values: dict[str, Any] = {"state": DestinationStatus.UP, "next_probe_at": None,
                              "last_success_at": now}
    if delivered:
        values["failures"] = 0
    if came_back:
        values["since"] = now
    session.execute(update(DestinationState).where(DestinationState.name == name)
                    .values(**values).execution_options(synchronize_session=False))
    return came_back


def record_failure(
    session: Session,
    name: str,
    state: DestinationStatus,
    error: str,
    now: datetime,
    probe_delay: Callable[[int], timedelta],
) -> DestinationView:
    """The destination is down or refusing: keep `error`, count the failure and set the next
    probe `probe_delay(failures)` from now. Returns the new state."""
    _ensure(session, name, now)
    row = session.get(DestinationState, name, populate_existing=True)
    failures = (row.failures if row is not None else 0) + 1
    values: dict[str, Any] = {
        "state": state, "failures": failures, "last_error": error[:2000], "last_error_at": now,
        "next_probe_at": now + probe_delay(failures),
    }
    if row is None or row.state is not state:
        values["since"] = now
    session.execute(update(DestinationState).where(DestinationState.name == name)
                    .values(**values).execution_options(synchronize_session=False))
    refreshed = session.get(DestinationState, name, populate_existing=True)
    return _view(refreshed)  # type: ignore[arg-type]


def _ensure(session: Session, name: str, now: datetime) -> None:
    """Insert an UP row for `name` unless one exists (two senders may race: no error)."""
    values = {"name": name, "state": DestinationStatus.UP, "since": now, "failures": 0}
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        statement: Any = sqlite.insert(DestinationState).values(values).on_conflict_do_nothing()
    elif dialect == "postgresql":
        statement = postgresql.insert(DestinationState).values(values).on_conflict_do_nothing()
    else:
        if session.get(DestinationState, name) is not None:
            return
        statement = insert(DestinationState).values(values)
    session.execute(statement)


def _view(row: DestinationState) -> DestinationView:
    return DestinationView(**{f.name: getattr(row, f.name) for f in fields(DestinationView)})
