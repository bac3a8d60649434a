"""The service object: wires settings, database, spool, listener and scheduler, and runs them.

It is the only long-lived object of a running node (no module globals). Later parts extend it:

- `service.add(component)`: anything with `name`, `start()` and `stop()` (a worker, a sender).
  Components start in order after the scheduler and before the listener, and stop in reverse
  (the listener stops first, so no new work arrives while the rest winds down).
- `service.scheduler`: the APScheduler BackgroundScheduler; add periodic jobs before `start()`.
- `service.metrics`: the node's NodeMetrics (dicom_node.metrics) and its Prometheus registry,
  served at /metrics; e.g. `service.metrics.purged("retention", studies, size_bytes)`.
- `service.study_queued`: a threading.Event set whenever a study becomes QUEUED, and
  `service.on_study_queued(callback)` for a callback with the UIDs; a worker waits on the event
  (with a timeout as a fallback poll), clears it and claims.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from types import FrameType
from typing import Protocol

from apscheduler.schedulers.background import BackgroundScheduler

from dicom_node.assembler import Assembler
from dicom_node.listener import AccessPolicy, Intake, Listener, utc_now
from dicom_node.logs import log_event
from dicom_node.metrics import NodeMetrics, WorkListCollector
from dicom_node.retention import Retention
from dicom_node.settings import Settings
from storage.db import Database, open_database
from storage.spool import Spool

LOG = logging.getLogger(__name__)
ASSEMBLY_JOB_ID = "assemble-studies"
QUIET_SLACK_S = 0.01  # fire just after the quiet period, not a hair before it
RETENTION_JOB_ID = "retention-purge"
RETENTION_FIRST_RUN_MINUTES = 1  # a restarted node purges soon, not a whole interval later


class Component(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SchedulerComponent:
    name = "scheduler"

    def __init__(self, scheduler: BackgroundScheduler) -> None:
        self.scheduler = scheduler

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)  # lets a running job finish


class Service:
    def __init__(self, settings: Settings, clock: Callable[[], datetime] = utc_now) -> None:
        self.settings = settings
        self.clock = clock
        self.database: Database = open_database(settings.database_url,
                                                     options=settings.engine_options)
        self.spool = Spool(settings.spool_path)
        self.study_queued = threading.Event()
        self.metrics = NodeMetrics()  # the node's own Prometheus registry: service.metrics.registry
        self._queued_callbacks: list[Callable[[Sequence[str]], None]] = []
        self.assembler = Assembler(self.database, settings.worklist, clock, self._announce)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.scheduler.add_job(
            self.assembler.run_scheduled,
            "interval",
            seconds=settings.worklist.assembly_interval_seconds,
            id=ASSEMBLY_JOB_ID,
            max_instances=1,
            coalesce=True,
        )
        self.retention = Retention.for_settings(settings, self.database, clock)
        self.retention.on_purged = self.metrics.purged
        if settings.retention.interval_minutes > 0:
            self.scheduler.add_job(
                self.retention.run_scheduled, "interval",
                minutes=settings.retention.interval_minutes, id=RETENTION_JOB_ID,
                max_instances=1, coalesce=True,
                next_run_time=utc_now() + timedelta(minutes=min(
                    settings.retention.interval_minutes, RETENTION_FIRST_RUN_MINUTES)),
            )
        self.intake = Intake(
            self.database,
            self.spool,
            settings.node.min_free_disk_mb,
            clock,
            on_stored=self._schedule_quiet_check,
            max_inflated_mb=settings.node.max_inflated_mb,
            pressure_margin_mb=settings.retention.pressure_margin_mb,
            relieve_pressure=self.retention.relieve,
            on_answered=self.metrics.instance_answered,
        )
        self.metrics.watch(WorkListCollector(
            self.database, self.spool, self.intake.min_free_bytes,
            [d.name for d in settings.destinations], clock))
        self.listener = Listener(
            settings.node, self.intake, AccessPolicy.from_settings(settings.node)
        )
        self.components: list[Component] = [SchedulerComponent(self.scheduler), self.listener]
        self._started: list[Component] = []
        self._stop_requested = threading.Event()

    # -- extension points -------------------------------------------------------------------

    def add(self, component: Component) -> None:
        """Run `component` with the node: started before the listener, stopped after it."""
        self.components.insert(self.components.index(self.listener), component)

    def on_study_queued(self, callback: Callable[[Sequence[str]], None]) -> None:
        """Call `callback(study_uids)` (from the scheduler thread) whenever studies are queued."""
        self._queued_callbacks.append(callback)

    def _announce(self, study_uids: Sequence[str]) -> None:
        self.study_queued.set()
        for callback in self._queued_callbacks:
            try:
                callback(study_uids)
            except Exception:  # noqa: BLE001  one bad listener must not stop assembly
                log_event(LOG, "queued_callback_failed", level=logging.ERROR, exc_info=True)

    def _schedule_quiet_check(self, study_uid: str, arrived: datetime) -> None:
        """Check the study again the moment its quiet period can have ended, so a study is queued
        `stable_seconds` after its last instance rather than at the next periodic tick. Each new
        instance moves the check later (one job per study, replaced)."""
        if not self.scheduler.running:
            return
        due = arrived + timedelta(seconds=self.settings.worklist.stable_seconds + QUIET_SLACK_S)
        self.scheduler.add_job(
            self.assembler.run_scheduled,
            "date",
            run_date=due,
            id=f"quiet-{study_uid}",
            replace_existing=True,
            misfire_grace_time=None,
        )

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        self.spool.prepare()
        from dicom_node.reconcile import reconcile

        reconcile(self.database, self.spool, Spool(self.settings.outbox_path),
                  self.clock)  # before the listener: nothing is being written yet
        self.assembler.tick()  # expired leases from before a restart go back to the queue now
        for component in self.components:
            component.start()
            self._started.append(component)
        log_event(
            LOG,
            "node_started",
            ae_title=self.settings.node.ae_title,
            port=self.listener.port,
            data_dir=str(self.settings.data_path),
            database=self.database.dialect,
        )
        from dicom_node.startup import log_clinical_use_off

        log_clinical_use_off(self.settings)

    def stop(self) -> None:
        """Stop components in reverse order, then close the database. Safe to call twice."""
        while self._started:
            component = self._started.pop()
            try:
                component.stop()
            except Exception:  # noqa: BLE001  keep stopping the others
                log_event(
                    LOG,
                    "component_stop_failed",
                    level=logging.ERROR,
                    component=component.name,
                    exc_info=True,
                )
        self.database.dispose()
        log_event(LOG, "node_stopped")

    def request_stop(self) -> None:
        self._stop_requested.set()

    def run_until_signalled(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then shut down gracefully."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.start()
            while not self._stop_requested.wait(timeout=1.0):
                pass
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log_event(LOG, "shutdown_requested", signal=signal.Signals(signum).name)
        self.request_stop()
