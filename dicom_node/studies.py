"""The service layer for what an admin does to studies, shared by the CLI and any console:
re-queue failed studies (`retry`) and ask for a new result (`reprocess`). No SQL here either:
storage does the queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from storage import outbound, results, worklist
from storage.db import Database
from storage.states import InvalidTransition, StudyState


@dataclass(frozen=True)
class Requeued:
    study_instance_uid: str
    previous_state: str | None  # None: not re-queued (see error)
    error: str | None = None  # why not (missing study, or a state it cannot leave this way)


def requeue_studies(
    database: Database, uids: Sequence[str], now: datetime, reprocess: bool = False
) -> list[Requeued]:
    """Re-queue each study of `uids` (one transaction each, so one refusal does not undo the
    others): `retry` takes FAILED studies (and QUEUED ones waiting out a backoff, made due now);
    `reprocess` takes DONE, SKIPPED or FAILED ones and the worker then makes a new result that
    supersedes the last. Attempts start again from 0. Returns one line per UID."""
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
             "reason": i.reason, "flags": list(i.flags)}
            for i in latest.images
        ],
        "sr_sop_instance_uid": latest.sr_sop_instance_uid,
        "summary_sop_instance_uid": latest.summary_sop_instance_uid,
        "deliveries": [
            {"destination": d.destination, "kind": d.kind, "sop_instance_uid": d.sop_instance_uid,
             "state": d.state.value, "attempts": d.attempts, "sent_at": d.sent_at,
             "last_error": d.last_error}
            for d in deliveries
        ],
    }
