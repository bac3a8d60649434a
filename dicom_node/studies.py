"""The service layer for studies, shared by the CLI and the console: re-queue failed studies
(`retry`), ask for a new result (`reprocess`), a study's current result, the console's work
list and Study page. No SQL here either: storage does the queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dicom_node import audit
from dicom_node.audit import Actor
from storage import outbound, results, study_search, worklist
from storage.db import Database
from storage.states import InvalidTransition, StudyState
from storage.study_search import StudyQuery, StudyRow, accession_sha256


@dataclass(frozen=True)
class Requeued:
    study_instance_uid: str
    previous_state: str | None  # None: not re-queued (see error)
    error: str | None = None  # why not (missing study, or a state it cannot leave this way)


def requeue_studies(
    database: Database, uids: Sequence[str], now: datetime, reprocess: bool = False, *,
    actor: Actor,
) -> list[Requeued]:
    """Re-queue each study of `uids` (one transaction each, so one refusal does not undo the
    others): `retry` takes FAILED studies (and QUEUED ones waiting out a backoff, made due now);
    `reprocess` takes DONE, SKIPPED or FAILED ones and the worker then makes a new result that
    supersedes the last. Attempts start again from 0. Each re-queued study gets an audit row
    ("study.retry" | "study.reprocess", state before and after) by `actor`. Returns one line
    per UID."""
    outcomes = []
    for uid in uids:
        purged = _purged_at(database, uid) if reprocess else None
        if purged is not None:
            when = purged.strftime("%Y-%m-%d %H:%M")
            outcomes.append(Requeued(uid, None, f"its images were purged at {when} "
                                                "(retention): nothing to reprocess"))
            continue
        try:
            with database.sessions.begin() as session:
                previous = worklist.requeue(session, uid, now, reprocess=reprocess)
                audit.record(session, actor, "study.reprocess" if reprocess else "study.retry",
                             uid, before={"state": previous.value},
                             after={"state": StudyState.QUEUED.value}, now=now)
        except InvalidTransition as exc:
            outcomes.append(Requeued(uid, None, str(exc)))
            continue
        outcomes.append(Requeued(uid, previous.value))
    return outcomes


def _purged_at(database: Database, uid: str) -> datetime | None:
    """When retention deleted the study's images, if none arrived since; else None."""
    with database.read_only() as session:
        detail = worklist.study_detail(session, uid)
    if detail is None or detail[0].purged_at is None:
        return None
    study = detail[0]
    return study.purged_at if study.last_arrival_at <= study.purged_at else None


def uids_in_state(database: Database, state: StudyState) -> list[str]:
    """Every study in `state` (for `--state FAILED --all`)."""
    with database.read_only() as session:
        return worklist.study_uids_in(session, state)


def study_result(database: Database, study_instance_uid: str) -> dict[str, Any] | None:
    """The study's current (newest) result for `studies show`: model, profile version, each
    finding's score, threshold and decision, which images were scored or skipped and why, the
    SR and summary UIDs, and each delivery's state. None when the study has no result yet."""
    with database.read_only() as session:
        found = results.results_for_study(session, study_instance_uid)
        if not found:
            return None
        latest = found[-1]
        deliveries = outbound.deliveries_for_result(session, latest.id)
    return {
        "version": latest.version,
        "created_at": latest.created_at,
        "supersedes_version": latest.version - 1 if latest.supersedes_id else None,
        "analysed": latest.analysed,
        "model": latest.model_name,
        "checkpoint_sha256s": list(latest.checkpoint_sha256s),
        "catalogue_version": latest.catalogue_version,
        "clinical_use": latest.clinical_use,
        "profile_version": latest.profile_version,
        "aggregation": latest.aggregation,
        "findings": [
            {"label": f.label, "score": round(f.probability, 4), "threshold": f.threshold,
             "decision": "present" if f.present else "absent", "derivation": f.derivation}
            for f in latest.findings
        ],
        "images": [
            {"sop_instance_uid": i.sop_instance_uid, "scored": i.eligible,
             "reason": i.reason, "flags": list(i.flags),
             "scores": None if i.scores is None else {k: round(v, 4)
                                                      for k, v in i.scores.items()}}
            for i in latest.images
        ],
        "sr_sop_instance_uid": latest.sr_sop_instance_uid,
        "summary_sop_instance_uid": latest.summary_sop_instance_uid,
        "text_sop_instance_uid": latest.text_sop_instance_uid,
        "deliveries": [
            {"destination": d.destination, "kind": d.kind, "sop_instance_uid": d.sop_instance_uid,
             "state": d.state.value, "attempts": d.attempts, "sent_at": d.sent_at,
             "last_error": d.last_error}
            for d in deliveries
        ],
    }


@dataclass(frozen=True)
class WorklistFilters:
    """The console's work-list filters; empty values filter nothing. `search` is a Study
    Instance UID or an Accession Number (matched by its SHA-256, the number is not stored)."""

    state: str = ""
    day_from: date | None = None  # last arrival on or after this UTC day
    day_to: date | None = None  # ... on or before this UTC day
    finding: str = ""  # present in the current result
    calling_ae: str = ""
    search: str = ""


def find_studies(database: Database, filters: WorklistFilters, page: int, per_page: int
                 ) -> tuple[list[StudyRow], int]:
    """(one page of studies, newest arrival first; the number matching). Raises ValueError
    for an unknown state."""
    state = StudyState(filters.state.upper()) if filters.state else None
    text = filters.search.strip()
    query = StudyQuery(
        state=state,
        arrived_from=_day_start(filters.day_from),
        arrived_before=_day_start(filters.day_to + timedelta(days=1)) if filters.day_to else None,
        finding_present=filters.finding or None, calling_ae_title=filters.calling_ae or None,
        study_instance_uid=text or None, accession_sha256=accession_sha256(text),
        limit=per_page, offset=(max(page, 1) - 1) * per_page)
    with database.read_only() as session:
        return study_search.search(session, query)


def calling_ae_titles(database: Database) -> list[str]:
    with database.read_only() as session:
        return study_search.calling_ae_titles(session)


def _day_start(day: date | None) -> datetime | None:
    return None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)


def study_overview(database: Database, spool_root: Path, study_instance_uid: str
                   ) -> dict[str, Any] | None:
    """Everything the Study page shows: the work-list summary and instances, the current
    result (study_result), ignored instances, and the Accession Number read from the first
    spooled file that still exists (None if none: purged or absent). None if no such study."""
    from storage.ignored import ignored_counts

    with database.read_only() as session:
        detail = worklist.study_detail(session, study_instance_uid)
        ignored = ignored_counts(session, study_instance_uid)
    if detail is None:
        return None
    study, instances = detail
    return {"study": study, "instances": instances, "ignored": ignored,
            "result": study_result(database, study_instance_uid),
            "accession_number": _accession(spool_root, instances)}


def _accession(spool_root: Path, instances: Sequence[Any]) -> str | None:
    from pydicom import dcmread

    for instance in instances:
        path = spool_root / instance.spool_path
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["AccessionNumber"])
        except (OSError, ValueError, TypeError):
            continue
        return str(ds.get("AccessionNumber", "") or "").strip() or None
    return None


def finding_labels(settings: Any) -> list[str]:
    """The catalogue's finding labels in catalogue order (the work list's finding filter);
    empty when the catalogue cannot be read (the page still works without the filter)."""
    from ml.catalogue import CatalogueError, load_catalogue

    try:
        catalogue = load_catalogue(settings.resolve(settings.model.findings_file))
    except (CatalogueError, OSError, ValueError):
        return []
    return [f.label for f in catalogue.findings if f.enabled]
