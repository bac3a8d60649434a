"""The work-list state machine: recording instances, assembling studies, leases, outcomes.

Every function takes the caller's Session and a timezone-aware `now` (the clock is injected) and
does not commit: the caller owns the transaction (`with db.sessions.begin() as session: ...`).
Each transition is a guarded UPDATE (`... WHERE state = <expected>`); when no row matches,
someone else moved the study first and InvalidTransition (or LeaseLost) is raised.

On SQLite every write transaction starts with BEGIN IMMEDIATE (see storage.db), so transitions
are serialised; on PostgreSQL `claim_next` selects with FOR UPDATE SKIP LOCKED so that several
workers on several machines can share one work list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, insert, or_, select, update
from sqlalchemy.orm import Session

from storage import wakeups
from storage.models import Instance, Study
from storage.states import (
    FINISHED_STATES,
    REOPENABLE_STATES,
    InvalidTransition,
    LeaseLost,
    StudyState,
)
from storage.views import InstanceSummary, StudySummary, counts_by_state


@dataclass(frozen=True)
class InstanceRecord:
    """What the listener knows about one stored instance (no patient identifiers)."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    spool_path: str
    size_bytes: int
    calling_ae_title: str | None
    accession_sha256: str | None = None  # SHA-256 of the Accession Number, never the number


@dataclass(frozen=True)
class RecordOutcome:
    study_id: int
    duplicate: bool  # the SOP Instance UID was already recorded; nothing changed
    reopened_from: StudyState | None  # the state a late instance moved back to RECEIVING


@dataclass(frozen=True)
class ClaimedInstance:
    sop_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    spool_path: str  # relative to the spool root: Spool.absolute(spool_path)


@dataclass(frozen=True)
class ClaimedStudy:
    study_id: int
    study_instance_uid: str
    worker_id: str
    attempts: int  # failed attempts before this one
    claimed_at: datetime
    lease_until: datetime
    instances: tuple[ClaimedInstance, ...]
    reprocess: bool = False  # make a new result even if the inputs are those of the last one


@dataclass(frozen=True)
class SweepOutcome:
    study_instance_uid: str
    state: StudyState  # QUEUED again, or FAILED after max_attempts
    attempts: int


# --- intake -------------------------------------------------------------------------------


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalars(
        select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)
    ).one_or_none()


def record_instance(session: Session, record: InstanceRecord, now: datetime) -> RecordOutcome:
    """Add an instance to its study (created in RECEIVING if new); idempotent per SOP UID.

    A new instance for a QUEUED or finished study reopens it to RECEIVING (the quiet period
    starts again). For a PROCESSING study the worker keeps its lease; `finish` reopens it.
    """
    _insert_ignoring_conflict(
        session, Study, _new_study_values(record.study_instance_uid, now), "study_instance_uid"
    )
    study_id, state = session.execute(
        _for_update(
            select(Study.id, Study.state).where(
                Study.study_instance_uid == record.study_instance_uid
            )
        )
    ).one()
    values = asdict(record) | {"study_id": study_id, "received_at": now}
    inserted = _insert_ignoring_conflict(session, Instance, values, "sop_instance_uid")
    if not inserted:
        return RecordOutcome(study_id=study_id, duplicate=True, reopened_from=None)
    changes: dict[str, Any] = {
        "instance_count": Study.instance_count + 1,
        "bytes_total": Study.bytes_total + record.size_bytes,
        "last_arrival_at": now,
    }
    reopened = state in REOPENABLE_STATES
    if reopened:
        changes |= _reopen_values(state, now)
    _guarded_update(session, study_id, state, changes)
    return RecordOutcome(
        study_id=study_id, duplicate=False, reopened_from=state if reopened else None
    )


def _new_study_values(study_uid: str, now: datetime) -> dict[str, Any]:
    return {
        "study_instance_uid": study_uid,
        "state": StudyState.RECEIVING,
        "instance_count": 0,
        "bytes_total": 0,
        "first_arrival_at": now,
        "last_arrival_at": now,
        "state_changed_at": now,
        "attempts": 0,
        "reopened_count": 0,
    }


def _reopen_values(state: StudyState, now: datetime) -> dict[str, Any]:
    """Back to RECEIVING from `state` (QUEUED, or a finished state)."""
    values: dict[str, Any] = {
        "state": StudyState.RECEIVING,
        "state_changed_at": now,
        "queued_at": None,
        "not_before": None,
    }
    if state in FINISHED_STATES:
        # New content: a fresh set of attempts, and the next result supersedes the previous.
        values |= {
            "attempts": 0,
            "reopened_count": Study.reopened_count + 1,
            "claimed_at": None,
            "lease_until": None,
            "worker_id": None,
            "skip_reason": None,
        }
    return values


# --- assembly -----------------------------------------------------------------------------


def queue_stable_studies(session: Session, stable_seconds: float, now: datetime) -> list[str]:
    """Move RECEIVING studies with no arrival for `stable_seconds` to QUEUED; their UIDs."""
    cutoff = now - timedelta(seconds=stable_seconds)
    result = session.execute(
        update(Study)
        .where(Study.state == StudyState.RECEIVING, Study.last_arrival_at <= cutoff)
        .values(state=StudyState.QUEUED, state_changed_at=now, queued_at=now)
        .returning(Study.study_instance_uid)
        .execution_options(synchronize_session=False)
    )
    queued = list(result.scalars())
    if queued:
        wakeups.notify(session, wakeups.QUEUED)
    return queued


# --- leases -------------------------------------------------------------------------------


def claim_next(
    session: Session, worker_id: str, lease_seconds: float, now: datetime
) -> ClaimedStudy | None:
    """Claim the oldest QUEUED study that is due (no `not_before` in the future) for
    `worker_id` with a lease; None when no study is due."""
    lease_until = now + timedelta(seconds=lease_seconds)
    candidate = (
        select(Study.id)
        .where(
            Study.state == StudyState.QUEUED,
            or_(Study.not_before.is_(None), Study.not_before <= now),
        )
        .order_by(Study.queued_at, Study.id)
        .limit(1)
    )
    if _dialect(session) == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    study_id = session.scalars(candidate).first()
    if study_id is None:
        return None
    row = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.state == StudyState.QUEUED)
        .values(
            state=StudyState.PROCESSING,
            state_changed_at=now,
            claimed_at=now,
            lease_until=lease_until,
            worker_id=worker_id,
        )
        .returning(Study.study_instance_uid, Study.attempts, Study.reprocess)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:  # moved between select and update (only possible without row locks)
        return None
    return ClaimedStudy(
        study_id=study_id,
        study_instance_uid=row.study_instance_uid,
        worker_id=worker_id,
        attempts=row.attempts,
        claimed_at=now,
        lease_until=lease_until,
        instances=_claimed_instances(session, study_id),
        reprocess=bool(row.reprocess),
    )


def _claimed_instances(session: Session, study_id: int) -> tuple[ClaimedInstance, ...]:
    """The study's instances that still have their file: those retention purged (received
    before `purged_at`) are left out, so a late instance for a purged study is processed."""
    rows = session.scalars(
        select(Instance).join(Study, Study.id == Instance.study_id)
        .where(Instance.study_id == study_id,
               or_(Study.purged_at.is_(None), Instance.received_at > Study.purged_at))
        .order_by(Instance.id)
    )
    return tuple(
        ClaimedInstance(
            sop_instance_uid=i.sop_instance_uid,
            series_instance_uid=i.series_instance_uid,
            sop_class_uid=i.sop_class_uid,
            transfer_syntax_uid=i.transfer_syntax_uid,
            modality=i.modality,
            body_part_examined=i.body_part_examined,
            view_position=i.view_position,
            spool_path=i.spool_path,
        )
        for i in rows
    )


def renew_lease(
    session: Session, study_id: int, worker_id: str, lease_seconds: float, now: datetime
) -> datetime:
    """Extend the lease of a study this worker holds; LeaseLost if it no longer does."""
    lease_until = now + timedelta(seconds=lease_seconds)
    result = session.execute(
        update(Study)
        .where(
            Study.id == study_id,
            Study.state == StudyState.PROCESSING,
            Study.worker_id == worker_id,
        )
        .values(lease_until=lease_until)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        raise LeaseLost(f"study {study_id} is not leased to {worker_id}")
    return lease_until


def requeue_expired(session: Session, now: datetime, max_attempts: int) -> list[SweepOutcome]:
    """Return PROCESSING studies whose lease expired to QUEUED (attempts + 1), or FAILED once
    attempts reach `max_attempts`."""
    return _return_leases(
        session, Study.lease_until < now, now, max_attempts,
        lambda row: f"lease expired at {row.lease_until.isoformat()} (worker {row.worker_id})",
    )


def lease_holders(session: Session) -> list[str]:
    """The distinct worker ids that hold a PROCESSING study now."""
    return list(session.scalars(
        select(Study.worker_id)
        .where(Study.state == StudyState.PROCESSING, Study.worker_id.is_not(None))
        .distinct()
    ))


def release_leases(
    session: Session, holders: Sequence[str], now: datetime, max_attempts: int
) -> list[SweepOutcome]:
    """Return at once the studies leased to `holders` (workers known to be gone, e.g. killed
    mid-study) as an expired lease would be: QUEUED with attempts + 1, or FAILED once attempts
    reach `max_attempts` (a study that kills its worker each time must not loop for ever)."""
    if not holders:
        return []
    return _return_leases(
        session, Study.worker_id.in_(list(holders)), now, max_attempts,
        lambda row: f"worker {row.worker_id} stopped while holding the lease",
    )


def give_back(session: Session, worker_id: str, now: datetime) -> list[str]:
    """The studies `worker_id` holds go back to QUEUED at once with no attempt counted (the
    worker is shutting down, the study did nothing wrong). Returns their Study Instance UIDs."""
    rows = session.execute(_for_update(
        select(Study.id, Study.study_instance_uid)
        .where(Study.state == StudyState.PROCESSING, Study.worker_id == worker_id)
    )).all()
    for row in rows:
        _guarded_update(session, row.id, StudyState.PROCESSING,
                        _outcome_values(StudyState.QUEUED, now),
                        extra_where=(Study.worker_id == worker_id,))
    if rows:
        wakeups.notify(session, wakeups.QUEUED)
    return [row.study_instance_uid for row in rows]


def _return_leases(
    session: Session,
    condition: Any,
    now: datetime,
    max_attempts: int,
    reason: Callable[[Any], str],
) -> list[SweepOutcome]:
    rows = session.execute(
        _for_update(
            select(
                Study.id,
                Study.study_instance_uid,
                Study.attempts,
                Study.worker_id,
                Study.lease_until,
            )
            .where(Study.state == StudyState.PROCESSING, condition)
            .order_by(Study.id)
        )
    ).all()
    outcomes = []
    for row in rows:
        attempts = row.attempts + 1
        target = _after_failure(attempts, max_attempts, permanent=False)
        values = _outcome_values(target, now) | {"attempts": attempts, "last_error": reason(row)}
        values.pop("queued_at", None)  # it keeps its place: next in line, not behind the queue
        _guarded_update(
            session,
            row.id,
            StudyState.PROCESSING,
            values,
            extra_where=(Study.lease_until == row.lease_until,),
        )
        outcomes.append(SweepOutcome(row.study_instance_uid, target, attempts))
    if any(o.state is StudyState.QUEUED for o in outcomes):
        wakeups.notify(session, wakeups.QUEUED)
    return outcomes


# --- what an admin asks for ---------------------------------------------------------------

RETRYABLE_STATES = frozenset({StudyState.FAILED, StudyState.QUEUED})
REPROCESSABLE_STATES = FINISHED_STATES


def requeue(
    session: Session, study_instance_uid: str, now: datetime, reprocess: bool = False
) -> StudyState:
    """An admin's retry (FAILED, or QUEUED waiting out a backoff) or reprocess (DONE, SKIPPED
    or FAILED): QUEUED and due now with a fresh set of attempts; with `reprocess` the worker
    makes a new result (superseding the last) even from the same inputs. Returns the state the
    study was in; InvalidTransition (saying why) when it is missing or in another state."""
    row = session.execute(
        _for_update(select(Study.id, Study.state).where(
            Study.study_instance_uid == study_instance_uid))
    ).first()
    if row is None:
        raise InvalidTransition(f"no study with Study Instance UID {study_instance_uid!r}")
    state = StudyState(row.state)
    allowed = REPROCESSABLE_STATES if reprocess else RETRYABLE_STATES
    if state not in allowed:
        names = ", ".join(sorted(s.value for s in allowed))
        raise InvalidTransition(
            f"study {study_instance_uid} is {state.value}; "
            f"{'reprocess' if reprocess else 'retry'} takes a study that is {names}"
        )
    values = _outcome_values(StudyState.QUEUED, now) | {"attempts": 0}
    if reprocess:
        values["reprocess"] = True
    _guarded_update(session, row.id, state, values)
    wakeups.notify(session, wakeups.QUEUED)
    return state


def study_uids_in(session: Session, state: StudyState) -> list[str]:
    """Study Instance UIDs of every study in `state`, oldest change first."""
    return list(session.scalars(
        select(Study.study_instance_uid)
        .where(Study.state == state)
        .order_by(Study.state_changed_at, Study.id)
    ))


# --- outcomes the worker reports ----------------------------------------------------------


def complete(session: Session, study_id: int, worker_id: str, now: datetime) -> StudyState:
    """The worker produced its result: DONE (or RECEIVING if instances arrived meanwhile)."""
    return _finish(session, study_id, worker_id, StudyState.DONE, now, {"last_error": None})


def skip(session: Session, study_id: int, worker_id: str, reason: str, now: datetime) -> StudyState:
    """Nothing to process (e.g. no eligible frontal image): SKIPPED with the reason."""
    return _finish(session, study_id, worker_id, StudyState.SKIPPED, now, {"skip_reason": reason})


def fail(
    session: Session,
    study_id: int,
    worker_id: str,
    error: str,
    now: datetime,
    max_attempts: int,
    permanent: bool = False,
    retry_delay_seconds: float = 0,
    retry_max_delay_seconds: float = 0,
) -> StudyState:
    """The attempt failed: QUEUED again for another try, or FAILED when `permanent` or after
    `max_attempts`; `error` is kept as last_error either way. A retried study is not claimed
    before `retry_delay(attempts, ...)` seconds from `now` (doubling per failed attempt)."""
    attempts = _held_study(session, study_id, worker_id)["attempts"] + 1
    target = _after_failure(attempts, max_attempts, permanent)
    delay = retry_delay(attempts, retry_delay_seconds, retry_max_delay_seconds)
    values: dict[str, Any] = {"attempts": attempts, "last_error": error}
    if target is StudyState.QUEUED and delay > 0:
        values["not_before"] = now + timedelta(seconds=delay)
    elif target is StudyState.QUEUED:
        wakeups.notify(session, wakeups.QUEUED)
    return _finish(session, study_id, worker_id, target, now, values)


def retry_delay(attempts: int, initial_seconds: float, max_seconds: float) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1-based): `initial_seconds`,
    doubling each time, at most `max_seconds`."""
    if initial_seconds <= 0 or attempts < 1:
        return 0.0
    return float(min(initial_seconds * 2 ** min(attempts - 1, 32), max_seconds))


def _after_failure(attempts: int, max_attempts: int, permanent: bool) -> StudyState:
    return StudyState.FAILED if permanent or attempts >= max_attempts else StudyState.QUEUED


def _finish(
    session: Session,
    study_id: int,
    worker_id: str,
    target: StudyState,
    now: datetime,
    extra: dict[str, Any],
) -> StudyState:
    held = _held_study(session, study_id, worker_id)
    values = _outcome_values(target, now) | extra
    if held["last_arrival_at"] > held["claimed_at"]:
        # Instances arrived while the worker held the lease: the study must be looked at again.
        values |= _reopen_values(target, now)
        target = StudyState.RECEIVING
    _guarded_update(
        session,
        study_id,
        StudyState.PROCESSING,
        values,
        extra_where=(Study.worker_id == worker_id,),
        lease=True,
    )
    return target


def _outcome_values(target: StudyState, now: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {
        "state": target,
        "state_changed_at": now,
        "lease_until": None,
        "worker_id": None,
        "not_before": None,
    }
    if target is StudyState.QUEUED:
        values["queued_at"] = now
    if target in (StudyState.DONE, StudyState.SKIPPED):
        values["reprocess"] = False
    return values


def _held_study(session: Session, study_id: int, worker_id: str) -> dict[str, Any]:
    row = session.execute(
        _for_update(
            select(
                Study.state,
                Study.worker_id,
                Study.attempts,
                Study.claimed_at,
                Study.last_arrival_at,
            ).where(Study.id == study_id)
        )
    ).first()
    if row is None:
        raise InvalidTransition(f"study {study_id} does not exist")
    if row.state != StudyState.PROCESSING or row.worker_id != worker_id:
        raise LeaseLost(
            f"study {study_id} is {row.state} held by {row.worker_id}, not leased to {worker_id}"
        )
    return dict(row._mapping)


# --- helpers ------------------------------------------------------------------------------


def _guarded_update(
    session: Session,
    study_id: int,
    expected: StudyState,
    values: dict[str, Any],
    extra_where: tuple[Any, ...] = (),
    lease: bool = False,
) -> None:
    result = session.execute(
        update(Study)
        .where(Study.id == study_id, Study.state == expected, *extra_where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 0:
        error = LeaseLost if lease else InvalidTransition
        raise error(f"study {study_id} was no longer {expected}")


def _insert_ignoring_conflict(
    session: Session, model: type[Study | Instance], values: dict[str, Any], unique: str
) -> bool:
    """INSERT ... ON CONFLICT (unique) DO NOTHING; True when a row was inserted."""
    # the dialect modules load only here: read-only commands (studies list) start faster
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = _dialect(session)
    if dialect == "sqlite":
        statement: Any = (
            sqlite.insert(model).values(values).on_conflict_do_nothing(index_elements=[unique])
        )
    elif dialect == "postgresql":
        statement = (
            postgresql.insert(model).values(values).on_conflict_do_nothing(index_elements=[unique])
        )
    else:
        column = getattr(model, unique)
        exists = session.scalar(select(func.count()).where(column == values[unique]))
        if exists:
            return False
        statement = insert(model).values(values)
    # RETURNING, not rowcount: with an implicit RETURNING psycopg reports rowcount -1
    return session.execute(statement.returning(model.id)).first() is not None


def _for_update(statement: Select[Any]) -> Select[Any]:
    # SQLite renders no FOR UPDATE; there the BEGIN IMMEDIATE write lock serialises instead.
    return statement.with_for_update()


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


# --- reports (CLI, status) ----------------------------------------------------------------


def state_counts(session: Session) -> dict[StudyState, int]:
    rows = session.execute(select(Study.state, func.count()).group_by(Study.state))
    return counts_by_state(StudyState, rows)


def known_spool_paths(session: Session) -> set[str]:
    """Every instance's spool path (reconciling the spool against the work list)."""
    return set(session.scalars(select(Instance.spool_path)))


def failed_since(session: Session, since: datetime) -> int:
    """How many studies ended FAILED at or after `since` (and are still FAILED)."""
    return int(session.scalar(
        select(func.count()).select_from(Study)
        .where(Study.state == StudyState.FAILED, Study.state_changed_at >= since)
    ) or 0)


def list_studies(
    session: Session, state: StudyState | None = None, limit: int = 100
) -> list[StudySummary]:
    """Studies, most recent arrival first, optionally only those in `state`."""
    query = select(Study).order_by(Study.last_arrival_at.desc(), Study.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Study.state == state)
    return [_summary(StudySummary, study) for study in session.scalars(query)]


def study_detail(
    session: Session, study_instance_uid: str
) -> tuple[StudySummary, list[InstanceSummary]] | None:
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == study_instance_uid)
    ).one_or_none()
    if study is None:
        return None
    instances = session.scalars(
        select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
    )
    return _summary(StudySummary, study), [_summary(InstanceSummary, i) for i in instances]


def arrivals_since(session: Session, since: datetime) -> list[tuple[datetime, StudyState]]:
    """(first arrival, state) of every study that first arrived at or after `since`."""
    query = select(Study.first_arrival_at, Study.state).where(Study.first_arrival_at >= since)
    return [(at, StudyState(state)) for at, state in session.execute(query)]


def recent_instances(session: Session, limit: int = 5) -> list[InstanceSummary]:
    query = select(Instance).order_by(Instance.received_at.desc(), Instance.id.desc()).limit(limit)
    return [_summary(InstanceSummary, i) for i in session.scalars(query)]


def _summary(cls: Any, row: Any) -> Any:
    return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})
