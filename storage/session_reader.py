"""The WorkListReader over SQLAlchemy (storage.reader): the storage modules' own query
functions on one read-only Session. Used for every database that is not a plain SQLite file
(PostgreSQL), and the reference that storage.sqlite_reader is tested against."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from storage import destinations, heartbeat, ignored, outbound, worklist
from storage.db import NoSchemaError, open_empty, open_read_only
from storage.reader import ReadError, error_text
from storage.states import OutboundState, StudyState
from storage.views import (
    DestinationCounts,
    DestinationView,
    HeartbeatView,
    InstanceSummary,
    StudySummary,
)


class SessionReader:
    """storage.reader.WorkListReader on `session` (the caller's; never committed)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def study_state_counts(self) -> dict[StudyState, int]:
        return worklist.state_counts(self.session)

    def failed_since(self, since: datetime) -> int:
        return worklist.failed_since(self.session, since)

    def list_studies(self, state: StudyState | None = None, limit: int = 100) -> list[StudySummary]:
        return worklist.list_studies(self.session, state, limit)

    def recent_instances(self, limit: int = 5) -> list[InstanceSummary]:
        return worklist.recent_instances(self.session, limit)

    def ignored_counts(self, study_instance_uid: str | None = None) -> dict[str, int]:
        return ignored.ignored_counts(self.session, study_instance_uid)

    def heartbeats(self) -> list[HeartbeatView]:
        return heartbeat.list_heartbeats(self.session)

    def outbound_state_counts(self) -> dict[OutboundState, int]:
        return outbound.state_counts(self.session)

    def destination_counts(self) -> dict[str, DestinationCounts]:
        return outbound.destination_counts(self.session)

    def destination_states(self) -> dict[str, DestinationView]:
        return destinations.list_states(self.session)


@contextmanager
def session_reader(url: str) -> Iterator[SessionReader]:
    """A SessionReader on the database at `url`, opened read-only (storage.db.open_read_only;
    an empty in-memory work list where there is none yet). Raises storage.reader.ReadError."""
    try:
        try:
            database = open_read_only(url)
        except NoSchemaError:
            database = open_empty()
    except SQLAlchemyError as exc:
        raise ReadError(error_text(exc)) from None
    try:
        with database.read_only() as session:
            yield SessionReader(session)
    except SQLAlchemyError as exc:
        raise ReadError(error_text(exc)) from None
    finally:
        database.dispose()
