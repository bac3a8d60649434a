"""Reading the work list for reports: `status`, `studies list` and `destinations list` ask a
WorkListReader. `open_reader(url)` gives the fast one (storage.sqlite_reader, standard library
only) for a SQLite file, and SQLAlchemy's (storage.session_reader) for anything else, such as
PostgreSQL. Both are read-only: no migration, nothing created, one read transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Protocol

from storage.states import OutboundState, StudyState
from storage.views import (
    DestinationCounts,
    DestinationView,
    HeartbeatView,
    InstanceSummary,
    StudySummary,
)

_SQLITE_PREFIXES = ("sqlite:///", "sqlite+pysqlite:///")


class WorkListReader(Protocol):
    """The report queries. Times are aware UTC datetimes; counts are ints."""

    def study_state_counts(self) -> dict[StudyState, int]:
        """Studies per state, every state present."""

    def failed_since(self, since: datetime) -> int:
        """Studies that ended FAILED at or after `since` (and are still FAILED)."""

    def list_studies(self, state: StudyState | None = None, limit: int = 100) -> list[StudySummary]:
        """Studies, the latest arrival first, optionally only those in `state`."""

    def recent_instances(self, limit: int = 5) -> list[InstanceSummary]:
        """The latest instances received, newest first."""

    def ignored_counts(self, study_instance_uid: str | None = None) -> dict[str, int]:
        """{SOP Class UID: count} of ignored instances, of one study or of all."""

    def heartbeats(self) -> list[HeartbeatView]:
        """Every recorded node process, the latest beat first."""

    def outbound_state_counts(self) -> dict[OutboundState, int]:
        """Deliveries per state, every state present."""

    def destination_counts(self) -> dict[str, DestinationCounts]:
        """Per destination with deliveries: counts by state and the oldest PENDING's age."""

    def destination_states(self) -> dict[str, DestinationView]:
        """Per destination contacted: its recorded state."""


class ReadError(Exception):
    """The work list exists but cannot be read (locked past the busy timeout, corrupt, no
    permission, server down); the message says why in the database driver's words."""


@contextmanager
def open_reader(url: str) -> Iterator[WorkListReader]:
    """A reader of the work list at SQLAlchemy URL `url` for the duration of the block; where
    the node never ran, a reader that finds everything empty. Raises ReadError."""
    path = sqlite_file(url)
    if path is None:
        from storage.session_reader import session_reader  # SQLAlchemy: 0.4 s of imports

        with session_reader(url) as reader:
            yield reader
        return
    from storage.sqlite_reader import SqliteReader, connect

    try:
        connection = connect(path)
    except sqlite3.Error as exc:
        raise ReadError(str(exc)) from None
    try:
        yield SqliteReader(connection)
    except sqlite3.Error as exc:
        raise ReadError(str(exc)) from None
    finally:
        if connection is not None:
            connection.close()


def sqlite_file(url: str) -> Path | None:
    """The file of a plain SQLite URL (sqlite:///relative/path or sqlite:////absolute/path, as
    SQLAlchemy reads them); None for any other URL, including one with a query string or with
    percent-encoding, which are left to SQLAlchemy to interpret."""
    for prefix in _SQLITE_PREFIXES:
        database = url.removeprefix(prefix)
        if database != url and database not in ("", ":memory:") and not set("%?#") & set(database):
            return Path(database).expanduser()
    return None


def error_text(exc: BaseException) -> str:
    """A database error in one line, in the driver's words: SQLAlchemy's wrapper (its
    "(Background on this error at: ...)" link) dropped and line breaks folded, since psycopg's
    messages run over several lines ("... Connection refused\\n\\tIs the server running ...")."""
    original = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError: the driver's exception
    text = str(original if original is not None else exc)
    return " ".join(text.split("\n(Background on this error at:")[0].split())


def display_url(url: str) -> str:
    """`url` as it may be shown and logged: with its password hidden."""
    if sqlite_file(url) is not None:
        return url  # nothing to hide, and SQLAlchemy would render it unchanged
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
