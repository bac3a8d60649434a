"""The service layer for what an admin does to studies, shared by the CLI and any console:
re-queue failed studies (`retry`) and ask for a new result (`reprocess`). No SQL here either:
storage does the queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from storage import worklist
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
        try:
            with database.sessions.begin() as session:
                previous = worklist.requeue(session, uid, now, reprocess=reprocess)
        except InvalidTransition as exc:
            outcomes.append(Requeued(uid, None, str(exc)))
            continue
        outcomes.append(Requeued(uid, previous.value))
    return outcomes


def uids_in_state(database: Database, state: StudyState) -> list[str]:
    """Every study in `state` (for `--state FAILED --all`)."""
    with database.read_only() as session:
        return worklist.study_uids_in(session, state)
