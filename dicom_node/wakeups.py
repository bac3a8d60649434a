"""The wake-up component of a node process on PostgreSQL: one thread listening for
`storage.wakeups` notifications and waking the worker(s) (a study became QUEUED) and the
sender (an outbound object became due) of this process at once, whichever host caused them.
Polling stays as the fallback: while the database is away the thread reconnects with backoff,
and after each (re)connection it wakes everyone once, for what it may have missed."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dicom_node.logs import log_event
from storage import wakeups
from storage.db import Database

LOG = logging.getLogger(__name__)
RECEIVE_SECONDS = 1.0  # how often the thread looks at its stop flag
RECONNECT_MAX_SECONDS = 5.0


class Wakeups:
    """A node component (`start`/`stop`); `on(channel, callback)` before `start()`."""

    name = "wakeups"

    def __init__(self, database: Database) -> None:
        self.database = database
        self._callbacks: dict[str, list[Callable[[], None]]] = {c: [] for c in wakeups.CHANNELS}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def supported(database: Database) -> bool:
        return wakeups.WakeupConnection.supported(database.engine)

    def on(self, channel: str, callback: Callable[[], None]) -> None:
        self._callbacks[channel].append(callback)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="wakeups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=RECEIVE_SECONDS + 5)
            self._thread = None

    def _run(self) -> None:
        connection = wakeups.WakeupConnection(self.database.engine)
        pause = 0.0
        while not self._stop.is_set():
            try:
                connection.open()
                self._fire(wakeups.CHANNELS)  # anything announced while we were not listening
                if pause:
                    log_event(LOG, "wakeups_listening_again")
                pause = 0.0
                while not self._stop.is_set():
                    self._fire(connection.receive(RECEIVE_SECONDS))
            except Exception as exc:  # noqa: BLE001  the database went away: poll meanwhile
                if not pause:
                    log_event(LOG, "wakeups_lost", level=logging.WARNING,
                              error=type(exc).__name__)
                pause = min(max(pause * 2, 0.5), RECONNECT_MAX_SECONDS)
                self._stop.wait(timeout=pause)
        connection.close()

    def _fire(self, channels: set[str] | tuple[str, ...]) -> None:
        for channel in channels:
            for callback in self._callbacks.get(channel, []):
                callback()
