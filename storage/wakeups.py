"""Wake-ups across processes and hosts: PostgreSQL LISTEN/NOTIFY.

A transaction that makes work (a study QUEUED, an outbound object due) calls `notify(session,
channel)`; PostgreSQL delivers the notification to every listening connection when that
transaction commits, and not at all when it rolls back. `WakeupConnection` is one dedicated
connection per process that listens. On SQLite both are no-ops and polling is the only
mechanism; on PostgreSQL polling stays as the fallback (a notification sent while a listener
was reconnecting is lost, so waiters still poll, only less often matters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

QUEUED = "dicom_node_queued"  # a study became QUEUED (assembly, a returned lease, a retry)
OUTBOUND = "dicom_node_outbound"  # an outbound object became due (new result, released claim)
CHANNELS = (QUEUED, OUTBOUND)


def notify(session: Session, channel: str) -> None:
    """Announce `channel` when the caller's transaction commits (PostgreSQL; else nothing)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


class WakeupConnection:
    """A connection of its own (outside the pool) that LISTENs on `channels`.

    `receive(timeout)` blocks up to `timeout` seconds and returns the channels notified (empty
    on timeout). Connection errors propagate (psycopg.OperationalError); the caller reconnects
    with `open()` after a pause. Only for PostgreSQL (`supported(engine)`)."""

    def __init__(self, engine: Engine, channels: Sequence[str] = CHANNELS) -> None:
        self.engine = engine
        self.channels = tuple(channels)
        self._connection: Any = None

    @staticmethod
    def supported(engine: Engine) -> bool:
        return engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"

    def open(self) -> None:
        import psycopg

        self.close()
        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        connection = psycopg.connect(*args, **kwargs, autocommit=True)
        for channel in self.channels:
            connection.execute(f"LISTEN {channel}")
        self._connection = connection

    def receive(self, timeout: float) -> set[str]:
        if self._connection is None:
            self.open()
        return {n.channel for n in self._connection.notifies(timeout=timeout)}

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None
