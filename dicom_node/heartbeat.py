"""The heartbeat of a running node process (`serve` or a standalone `worker`): a row in the work
list rewritten 3 times per `[node] heartbeat_seconds`, carrying how far the process's model
got, and deleted on a clean shutdown. `dicom-node status` reads these rows: a row that has not beaten
for three intervals belongs to a process that is gone.

Model states: off (this process runs no worker), loading, loaded, and why not: missing (a
configured checkpoint file is not there), corrupt (the file is there but is not a usable
checkpoint), failed (anything else, e.g. no checkpoint configured or a bad device).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from dicom_node.logs import log_event

if TYPE_CHECKING:  # SQLAlchemy: not for `status`, which reads only the states below
    from storage.db import Database

LOG = logging.getLogger(__name__)

OFF, LOADING, LOADED = "off", "loading", "loaded"
MISSING, CORRUPT, FAILED = "missing", "corrupt", "failed"
MODEL_NOT_READY = frozenset({MISSING, CORRUPT, FAILED})
STALE_INTERVALS = 3  # beats missed before a process counts as gone (status)
# A lease or send claim is taken back sooner, once its holder's row is 1.25 intervals old (a
# live process beats 3 times per interval, so its row is a third of one plus a write old,
# also when its host is loaded and the beat thread waits for the CPU), and workers and senders look
# for such holders 10 times per that age (every eighth of an interval): a killed worker's
# study is taken back at most 1.4 intervals after the kill, so another worker can finish it
# within 2
LEASE_STALE_INTERVALS = 1.25
BEATS_PER_INTERVAL = 3
SWEEPS_PER_STALE_AGE = 10

ModelStatus = tuple[str, str | None]  # (state, reason when not loaded)


def model_failure(exc: BaseException) -> ModelStatus:
    """The model state for a loading error: missing, corrupt or failed, with the reason."""
    from ml.architecture import CheckpointFormatError

    reason = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, FileNotFoundError):
        return MISSING, reason
    if isinstance(exc, CheckpointFormatError):
        return CORRUPT, reason
    return FAILED, reason


def stale_after_seconds(interval_seconds: float) -> float:
    """Age beyond which a heartbeat means the process is not running."""
    return STALE_INTERVALS * interval_seconds


def lease_stale_after_seconds(interval_seconds: float) -> float:
    """Age beyond which the leases and send claims of a process are taken back."""
    return LEASE_STALE_INTERVALS * interval_seconds


class Heartbeat:
    """A node component: beats every `interval_seconds` on its own thread (also when the
    scheduler or the worker is busy), and at once after `wake()` (e.g. the model loaded)."""

    name = "heartbeat"

    def __init__(
        self,
        database: Database,
        role: str,
        interval_seconds: float,
        clock: Callable[[], datetime],
        model_status: Callable[[], ModelStatus] = lambda: (OFF, None),
    ) -> None:
        self.database = database
        self.clock = clock
        self.interval = interval_seconds
        self.model_status = model_status
        self.host, self.pid, self.role = socket.gethostname(), os.getpid(), role
        self.started_at = clock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def process_id(self) -> str:
        return f"{self.host}:{self.pid}"

    def start(self) -> None:
        self._forget_gone()
        self.beat()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and delete this process's row: a clean stop is not a crash."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None
        from storage import heartbeat as heartbeats

        with self.database.sessions.begin() as session:
            heartbeats.remove(session, [self.process_id])

    def wake(self) -> None:
        self._wake.set()

    def beat(self) -> bool:
        """Write this process's row now; False (logged) when the database refused it."""
        from storage import heartbeat as heartbeats

        state, error = self.model_status()
        report = heartbeats.Beat(self.host, self.pid, self.role, self.started_at, state, error)
        try:
            with self.database.sessions.begin() as session:
                heartbeats.beat(session, report, self.clock())
        except Exception as exc:  # noqa: BLE001  a busy database must not stop the node
            log_event(LOG, "heartbeat_failed", level=logging.WARNING,
                      error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            # three beats per interval: a live process's row stays well younger than the
            # 1.25 intervals after which others take its leases back, even on a busy host
            self._wake.wait(timeout=self.interval / BEATS_PER_INTERVAL)
            self._wake.clear()
            if not self._stop.is_set():
                self.beat()

    def _forget_gone(self) -> None:
        """Rows of this host whose process no longer runs (a kill -9) are deleted at start-up;
        rows of other hosts are left to age out."""
        from dicom_node.processes import gone_holders
        from storage import heartbeat as heartbeats

        with self.database.sessions.begin() as session:
            ids = [h.process_id for h in heartbeats.list_heartbeats(session)]
            heartbeats.remove(session, gone_holders(ids, self.host, self.pid))
