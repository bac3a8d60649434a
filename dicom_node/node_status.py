"""The node's state in one report, shared by `dicom-node status` and the console's Overview:
health, identity, studies per state (now, and per arrival day), spool disk use against the
floor, the model and its cards, latest arrivals and failures. No SQL here: storage queries."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_node.settings import Settings
from storage.spool import Spool

if TYPE_CHECKING:  # SQLAlchemy: not for `status`
    from storage.db import Database
    from storage.reader import WorkListReader


def status_report(settings: Settings, reader: WorkListReader, now: datetime) -> dict[str, Any]:
    """The node's state as `dicom-node status --json` prints it and the console's Overview
    shows it: health verdict and reasons (dicom_node.health), identity, studies per state,
    spool use and free space against the floor (bytes), latest arrivals, the model and its
    cards. `reader` is storage.reader's (read-only; creates nothing)."""
    from dicom_node.health import health_report
    from storage.reader import display_url

    spool = Spool(settings.spool_path)
    used, files = _spool_usage(spool)
    free = _free_bytes(spool.root)
    floor = settings.node.min_free_disk_mb * 1024 * 1024
    counts = reader.study_state_counts()
    recent = reader.recent_instances(limit=5)
    ignored = sum(reader.ignored_counts().values())
    health = health_report(settings, reader, now, free < floor)
    return health | {
        "ae_title": settings.node.ae_title,
        "port": settings.node.port,
        "data_dir": str(settings.data_path),
        "database": display_url(settings.database_url),
        "states": {state.value: count for state, count in counts.items()},
        "ignored_instances": ignored,  # other SOP classes acknowledged, not kept
        "spool": {
            "path": str(spool.root),
            "used_bytes": used,
            "files": files,
            "free_bytes": free,
            "min_free_bytes": floor,
            "below_floor": free < floor,
        },
        "last_arrivals": [_jsonable(i) for i in recent],
        "model": _model_report(settings),
    }


def current_report(settings: Settings, now: datetime) -> dict[str, Any]:
    """status_report over a fresh read-only reader of the configured work list (the console's
    Overview). Raises storage.reader.ReadError when the work list cannot be read."""
    from storage.reader import open_reader

    with open_reader(settings.database_url) as reader:
        return status_report(settings, reader, now)


def activity(database: Database, now: datetime, days: int = 7) -> dict[str, Any]:
    """For the Overview: studies per state that arrived today (UTC) and in each of the last
    `days` days ({"YYYY-MM-DD": {state: count}}, oldest day first), the five latest FAILED
    studies (Study Instance UID, when, error), and the model, checkpoint SHA-256s and profile
    version of the newest result (what the node actually used last)."""
    from storage import results, worklist
    from storage.states import StudyState

    start = (now - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    per_day: dict[str, dict[str, int]] = {
        (start + timedelta(days=i)).strftime("%Y-%m-%d"): dict.fromkeys(
            (s.value for s in StudyState), 0) for i in range(days)}
    with database.read_only() as session:
        for arrived, state in worklist.arrivals_since(session, start):
            day = per_day.get(arrived.strftime("%Y-%m-%d"))
            if day is not None:
                day[state.value] += 1
        failed = worklist.list_studies(session, StudyState.FAILED, limit=5)
        newest = results.newest_result(session)
    today = now.strftime("%Y-%m-%d")
    return {"today": per_day.get(today, {}), "per_day": per_day,
            "newest_result": None if newest is None else {
                "model": newest.model_name, "checkpoint_sha256s": list(newest.checkpoint_sha256s),
                "profile_version": newest.profile_version, "created_at": newest.created_at,
                "catalogue_version": newest.catalogue_version},
            "latest_failures": [{"study_instance_uid": f.study_instance_uid,
                                 "at": f.state_changed_at, "error": f.last_error}
                                for f in failed]}


def checkpoint_hashes(settings: Settings, cache: dict[tuple[str, int, int], str]
                      ) -> dict[str, str | None]:
    """SHA-256 (hex) of each configured checkpoint file, by path; None for a missing one.
    `cache` (the caller's, keyed by path, size and mtime) spares re-reading a file that did
    not change: a released CheXzero checkpoint is ~600 MB (about a second to hash)."""
    from ml.model_card import file_sha256

    found: dict[str, str | None] = {}
    for path in (settings.resolve(p) for p in settings.model.checkpoints):
        try:
            stat = path.stat()
        except OSError:
            found[str(path)] = None
            continue
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in cache:
            cache[key] = file_sha256(path)
        found[str(path)] = cache[key]
    return found


def _model_report(settings: Settings) -> dict[str, Any]:
    """Whether the configured checkpoints are there (without them studies wait QUEUED), and
    what each one's model card says about clinical use."""
    from ml.model_card import card_statement

    checkpoints = [
        {"path": str(path), "present": path.is_file(), "card": card_statement(path)}
        for path in (settings.resolve(p) for p in settings.model.checkpoints)
    ]
    return {
        "name": settings.model.name,
        "clinical_use": settings.model.clinical_use,
        "checkpoints": checkpoints,
        "ready": bool(checkpoints) and all(c["present"] for c in checkpoints),
    }


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system where `path` is or would be, creating nothing (status is
    read-only: it must not make the data directory of a node that never ran)."""
    import shutil

    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _spool_usage(spool: Spool) -> tuple[int, int]:
    files = [p for p in spool.root.rglob("*.dcm") if p.is_file()] if spool.root.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)



def _jsonable(record: Any) -> dict[str, Any]:
    from storage.states import StudyState
    return {
        k: (_time(v) if isinstance(v, datetime) else v.value if isinstance(v, StudyState) else v)
        for k, v in dataclasses.asdict(record).items()
    }


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
