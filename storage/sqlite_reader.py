"""The work list's report queries over the standard library's sqlite3, for the commands that
must answer at once (`status`, `studies list`, `destinations list`): importing SQLAlchemy and
the models alone takes most of their 0.5 s start-up budget.

The queries are those of storage.worklist, storage.outbound, storage.destinations,
storage.heartbeat and storage.ignored (which storage.session_reader calls) written out in
SQL: the columns are the fields of storage.views, the rows are assembled by the same helpers
there, and values come back as the models' types give them (UtcDateTime: naive UTC text to an
aware datetime; enums stored by name). tests/test_sqlite_reader.py holds the two readers to
the same answers on the same databases.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from storage import views
from storage.states import DestinationStatus, OutboundState, StudyState
from storage.views import (
    DestinationCounts,
    DestinationView,
    HeartbeatView,
    InstanceSummary,
    StudySummary,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000  # also the node's own connections' (storage.db)
V = TypeVar("V")
# SQLAlchemy's Enum stores the member's name
_ENUMS: dict[str, type[StrEnum]] = {e.__name__: e for e in (StudyState, OutboundState,
                                                            DestinationStatus)}


def connect(path: Path) -> sqlite3.Connection | None:
    """A connection to the work list at `path` inside a read transaction (BEGIN DEFERRED: no
    write lock, one consistent snapshot for every query), or None where there is no work list
    yet (no file, or a file without the schema). Creates nothing. Raises sqlite3.Error."""
    if not path.is_file():
        return None
    uri = f"{path.absolute().as_uri()}?mode=rw"  # rw: a missing file is an error, not created
    connection = sqlite3.connect(uri, uri=True, isolation_level=None,
                                 timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        connection.execute("BEGIN")
        found = connection.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'study'").fetchone()
    except sqlite3.Error:
        connection.close()
        raise
    if found is None:
        connection.close()
        return None
    return connection


class SqliteReader:
    """storage.reader.WorkListReader over one sqlite3 connection from `connect`; with None
    (no work list yet) every query answers as on an empty work list."""

    def __init__(self, connection: sqlite3.Connection | None) -> None:
        self.connection = connection

    def study_state_counts(self) -> dict[StudyState, int]:
        return views.counts_by_state(
            StudyState, self._rows("SELECT state, count(*) FROM study GROUP BY state"))

    def failed_since(self, since: datetime) -> int:
        rows = self._rows("SELECT count(*) FROM study WHERE state = ? AND state_changed_at >= ?",
                          (StudyState.FAILED.name, _bind(since)))
        return rows[0][0] if rows else 0

    def list_studies(self, state: StudyState | None = None, limit: int = 100) -> list[StudySummary]:
        where, params = ("WHERE state = ? ", (state.name,)) if state is not None else ("", ())
        return self._views(StudySummary, f"FROM study {where}"
                           "ORDER BY last_arrival_at DESC, id DESC LIMIT ?", (*params, limit))

    def recent_instances(self, limit: int = 5) -> list[InstanceSummary]:
        return self._views(InstanceSummary,
                           "FROM instance ORDER BY received_at DESC, id DESC LIMIT ?", (limit,))

    def ignored_counts(self, study_instance_uid: str | None = None) -> dict[str, int]:
        if study_instance_uid is None:
            rows = self._rows("SELECT sop_class_uid, count(*) FROM ignored_instance "
                              "GROUP BY sop_class_uid")
        else:
            rows = self._rows("SELECT sop_class_uid, count(*) FROM ignored_instance "
                              "WHERE study_instance_uid = ? GROUP BY sop_class_uid",
                              (study_instance_uid,))
        return dict(rows)

    def heartbeats(self) -> list[HeartbeatView]:
        return self._views(HeartbeatView, "FROM heartbeat ORDER BY beat_at DESC")

    def outbound_state_counts(self) -> dict[OutboundState, int]:
        return views.counts_by_state(
            OutboundState, self._rows("SELECT state, count(*) FROM outbound GROUP BY state"))

    def destination_counts(self) -> dict[str, DestinationCounts]:
        return views.destination_counts(self._rows(
            "SELECT destination, state, count(*), min(created_at) FROM outbound "
            "GROUP BY destination, state"))

    def destination_states(self) -> dict[str, DestinationView]:
        return {v.name: v for v in self._views(DestinationView, "FROM destination_state")}

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        if self.connection is None:
            return []
        return self.connection.execute(sql, params).fetchall()

    def _views(self, view: Callable[..., V], tail: str, params: Sequence[Any] = ()) -> list[V]:
        """`SELECT <view's fields> <tail>`, each row made into a `view`."""
        columns = fields(view)  # type: ignore[arg-type]
        convert = [_converter(str(c.type)) for c in columns]
        rows = self._rows(f"SELECT {', '.join(c.name for c in columns)} {tail}", params)
        return [view(*(value if value is None or to is None else to(value)
                       for to, value in zip(convert, row, strict=True))) for row in rows]


def _converter(annotation: str) -> Callable[[Any], Any] | None:
    """How a column's stored value becomes the view field's type (None: as stored)."""
    kind = annotation.split(" | ")[0]
    if kind == "datetime":
        return views.utc
    enum = _ENUMS.get(kind)
    return None if enum is None else lambda name: enum[name]


def _bind(value: datetime) -> str:
    """An aware datetime as the models store it on SQLite (UtcDateTime: naive UTC text)."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
