"""Retention, done: deletes the files (and later the rows) that `storage.retention` says may go,
logs one line per run and keeps running totals for metrics.

Used three ways: the scheduled job inside `serve` (`run_scheduled`), `dicom-node purge
[--dry-run]` (`run`), and the listener's free-space check (`relieve`, disk pressure) before a
C-STORE would be refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dicom_node.logs import log_event
from dicom_node.settings import RetentionSettings, Settings
from storage import retention
from storage.db import Database
from storage.retention import Action, RetentionPolicy, StudyFacts, Verdict
from storage.spool import Spool

LOG = logging.getLogger(__name__)
RETENTION = "retention"
DISK_PRESSURE = "disk-pressure"
NOTHING_TO_PURGE_RETRY_S = 10.0  # under pressure with nothing purgeable: query again after this


@dataclass(frozen=True)
class PurgeItem:
    study_instance_uid: str
    state: str
    action: str  # files | rows
    delivered_at: datetime | None
    files: int  # files removed (or, on a dry run, that would be)
    size_bytes: int


@dataclass
class PurgeReport:
    dry_run: bool
    trigger: str  # retention (schedule or command) | disk-pressure
    items: list[PurgeItem] = field(default_factory=list)
    ignored_rows: int = 0  # ignored-instance rows past worklist_days

    @property
    def studies_purged(self) -> int:
        return sum(1 for i in self.items if i.action == Action.PURGE_FILES)

    @property
    def rows_deleted(self) -> int:
        return sum(1 for i in self.items if i.action == Action.DELETE_ROWS)

    @property
    def files(self) -> int:
        return sum(i.files for i in self.items)

    @property
    def size_bytes(self) -> int:
        return sum(i.size_bytes for i in self.items)


class Retention:
    """Purges for one node: its database, spool and outbox. Thread-safe (one purge at a
    time); `totals` counts studies purged and bytes freed per trigger, for metrics."""

    def __init__(
        self,
        database: Database,
        spool: Spool,
        outbox: Spool,
        settings: RetentionSettings,
        clock: Callable[[], datetime],
    ) -> None:
        self.database = database
        self.spool = spool
        self.outbox = outbox
        self.settings = settings
        self.policy = RetentionPolicy(settings.delivered_days, settings.worklist_days)
        self.clock = clock
        self.totals: Counter[str] = Counter()  # "<trigger>_studies", "<trigger>_bytes", ...
        # (reason "retention" | "disk_pressure", studies, bytes) after each purge that removed
        # something: the service points it at its metrics
        self.on_purged: Callable[[str, int, int], None] = lambda reason, studies, size: None
        self._lock = threading.Lock()
        self._nothing_until = 0.0  # monotonic time before which `relieve` does not look again

    @classmethod
    def for_settings(
        cls, settings: Settings, database: Database, clock: Callable[[], datetime]
    ) -> Retention:
        """The node's spool and outbox (`<data_dir>/spool`, `<data_dir>/outbox`)."""
        return cls(database, Spool(settings.spool_path), Spool(settings.outbox_path),
                   settings.retention, clock)

    def run(self, dry_run: bool = False) -> PurgeReport:
        """Apply the retention rules now: files of studies delivered `delivered_days` ago, rows
        of purged studies delivered `worklist_days` ago. A dry run changes nothing and reports
        what would go. Logs one `retention_purge` line (when anything went, or on a dry run)."""
        with self._lock:
            now = self.clock()
            with self.database.read_only() as session:
                due = retention.plan(retention.candidate_facts(session, self.policy, now),
                                     self.policy, now)
            report = PurgeReport(dry_run=dry_run, trigger=RETENTION)
            for facts, verdict in due:
                item = self._apply(facts, verdict, now, RETENTION, dry_run)
                if item is not None:
                    report.items.append(item)
            if not dry_run:
                with self.database.sessions.begin() as session:
                    report.ignored_rows = retention.delete_old_ignored(
                        session, now, self.settings.worklist_days)
        self._record(report)
        return report

    def run_scheduled(self) -> None:
        """The scheduler's job: `run()`, with any failure logged (the next run tries again)."""
        try:
            self.run()
        except Exception:  # noqa: BLE001  a failed purge must not stop the scheduler
            log_event(LOG, "retention_purge_failed", level=logging.ERROR, exc_info=True)

    def relieve(self, wanted_free_bytes: int) -> int:
        """Disk pressure: delete the files of delivered studies, oldest delivered first and
        whatever their age, until `wanted_free_bytes` are free or none is left. Returns the free
        bytes after. Logs one `disk_pressure_purge` line with counts and bytes freed."""
        with self._lock:
            free = self.spool.free_bytes()
            if free >= wanted_free_bytes or time.monotonic() < self._nothing_until:
                return free
            report = PurgeReport(dry_run=False, trigger=DISK_PRESSURE)
            now = self.clock()
            with self.database.read_only() as session:
                due = retention.plan(
                    retention.candidate_facts(session, self.policy, now, ignore_age=True),
                    self.policy, now, ignore_age=True)
            before = free
            for facts, verdict in due:
                if free >= wanted_free_bytes:
                    break
                if verdict.action is Action.PURGE_FILES:
                    item = self._apply(facts, verdict, now, DISK_PRESSURE, dry_run=False)
                    report.items += [item] if item else []
                    free = self.spool.free_bytes()
            if not report.items:
                self._nothing_until = time.monotonic() + NOTHING_TO_PURGE_RETRY_S
        self._record(report, free_before=before, free_after=free, wanted=wanted_free_bytes)
        return free

    def _apply(
        self, facts: StudyFacts, verdict: Verdict, now: datetime, reason: str, dry_run: bool
    ) -> PurgeItem | None:
        """Carry out one verdict (or, on a dry run, measure it); None when the study moved on
        since it was judged."""
        if verdict.action is Action.DELETE_ROWS:
            files, size = 0, 0
            if not dry_run:
                with self.database.sessions.begin() as session:
                    if not retention.delete_rows(session, facts):
                        return None
        elif dry_run:
            with self.database.read_only() as session:
                paths = self._paths(retention.study_files(
                    session, facts.study_id, facts.study_instance_uid))
            files, size = _measure(paths)
        else:
            done = self._purge_files(facts, now, reason)
            if done is None:
                return None
            files, size = done
        return PurgeItem(facts.study_instance_uid, facts.state.value, verdict.action.value,
                         verdict.delivered_at, files, size)

    def _purge_files(self, facts: StudyFacts, now: datetime, reason: str) -> tuple[int, int] | None:
        """Mark the study purged and delete its files in one transaction: the mark commits only
        after the files are gone (a crash between leaves the study to be purged again), and
        the write lock keeps a late instance or a resend from slipping in between."""
        with self.database.sessions.begin() as session:
            if not retention.claim_for_purge(session, facts, now, reason):
                return None
            paths = self._paths(retention.study_files(
                session, facts.study_id, facts.study_instance_uid))
            files, size = _delete(paths)
            retention.record_purged(session, facts.study_id, files, size)
        for root in (self.spool, self.outbox):
            _remove_if_empty(root.root / facts.study_instance_uid)
        return files, size

    def _paths(self, found: retention.StudyFiles) -> list[Path]:
        return ([self.spool.absolute(p) for p in found.spool]
                + [self.outbox.absolute(p) for p in found.outbox])

    def _record(self, report: PurgeReport, **extra: int) -> None:
        if not report.dry_run:
            self.totals[f"{report.trigger}_studies"] += report.studies_purged
            self.totals[f"{report.trigger}_bytes"] += report.size_bytes
            self.totals[f"{report.trigger}_rows_deleted"] += report.rows_deleted
            if report.studies_purged:
                self.on_purged(report.trigger.replace("-", "_"), report.studies_purged,
                               report.size_bytes)
        if not (report.items or report.dry_run or extra):
            return
        pressure = report.trigger == DISK_PRESSURE
        log_event(
            LOG, "disk_pressure_purge" if pressure else "retention_purge",
            level=logging.WARNING if pressure else logging.INFO,
            dry_run=report.dry_run, studies_purged=report.studies_purged,
            rows_deleted=report.rows_deleted, files_removed=report.files,
            bytes_freed=report.size_bytes, **extra,
        )


def _measure(paths: list[Path]) -> tuple[int, int]:
    files = size = 0
    for path in paths:
        try:
            size += path.stat().st_size
            files += 1
        except FileNotFoundError:
            continue
    return files, size


def _delete(paths: list[Path]) -> tuple[int, int]:
    """Unlink each file that exists; (files removed, bytes freed)."""
    files = size = 0
    for path in paths:
        try:
            length = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        files, size = files + 1, size + length
    return files, size


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (a late instance), or already gone
        pass
