"""Study assembly: a periodic tick that queues quiet studies and returns expired leases.

`Assembler.tick(now)` is one pass: RECEIVING studies with no arrival for `stable_seconds` become
QUEUED, and PROCESSING studies whose lease expired go back to QUEUED (or FAILED after
max_attempts). Whatever became QUEUED is announced through `on_queued` so that a worker can react
at once instead of polling.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from dicom_node.logs import log_event
from dicom_node.settings import WorklistSettings
from storage import worklist
from storage.db import Database, is_unavailable
from storage.states import StudyState

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickResult:
    queued: tuple[str, ...]  # studies that became QUEUED after their quiet period
    requeued: tuple[str, ...]  # expired leases back in the queue
    failed: tuple[str, ...]  # expired leases that used up max_attempts

    @property
    def newly_queued(self) -> tuple[str, ...]:
        return self.queued + self.requeued


class Assembler:
    def __init__(
        self,
        database: Database,
        settings: WorklistSettings,
        clock: Callable[[], datetime],
        on_queued: Callable[[Sequence[str]], None] = lambda uids: None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self.on_queued = on_queued

    def tick(self, now: datetime | None = None) -> TickResult:
        now = now or self.clock()
        with self.database.sessions.begin() as session:
            swept = worklist.requeue_expired(session, now, self.settings.max_attempts)
            queued = worklist.queue_stable_studies(session, self.settings.stable_seconds, now)
        result = TickResult(
            queued=tuple(queued),
            requeued=tuple(s.study_instance_uid for s in swept if s.state is StudyState.QUEUED),
            failed=tuple(s.study_instance_uid for s in swept if s.state is StudyState.FAILED),
        )
        self._log(result, swept)
        if result.newly_queued:
            self.on_queued(result.newly_queued)
        return result

    def run_scheduled(self) -> None:
        """The scheduler's job: one tick, and a log line instead of a dead job on error."""
        try:
            self.tick()
        except Exception as exc:  # noqa: BLE001  the next tick retries; the scheduler lives on
            if is_unavailable(exc):  # an outage says so once per tick, without a traceback
                log_event(LOG, "assembly_waiting_for_database", level=logging.WARNING,
                          error=type(exc).__name__)
                return
            log_event(LOG, "assembly_failed", level=logging.ERROR, exc_info=True)

    @staticmethod
    def _log(result: TickResult, swept: Sequence[worklist.SweepOutcome]) -> None:
        for uid in result.queued:
            log_event(LOG, "study_queued", study_instance_uid=uid)
        for outcome in swept:
            log_event(
                LOG,
                "lease_expired",
                level=logging.WARNING,
                study_instance_uid=outcome.study_instance_uid,
                state=outcome.state.value,
                attempts=outcome.attempts,
            )
