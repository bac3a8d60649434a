"""Retention: which studies may lose their files (patient data) and which work-list rows may go.

The rules (pure, `now` injected; `judge` applies them to one study's facts):

- A study's files (spool images, outbox SR and summary) are kept until its current result was
  delivered to every destination: every delivery row of the newest result SENT, none PENDING
  for any result. Delivered at = the last `sent_at`. A finished study with nothing to deliver
  (no destinations configured, or SKIPPED without a result) counts as delivered when it
  finished (`state_changed_at`).
- Files go `delivered_days` after delivery (or at once, oldest delivered first, under disk
  pressure). RECEIVING, QUEUED, PROCESSING and FAILED studies, and studies with a PENDING or
  DEAD delivery, are never touched: that work is not delivered and an admin may still act on
  it (`studies retry`, `outbound resend`).
- The study's rows (study, instances, results, deliveries; no patient data) go `worklist_days`
  after delivery, and only once its files have gone.

Functions taking a Session never commit; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from storage.models import IgnoredInstance, Instance, Outbound, OutboundState, Result, Study
from storage.states import StudyState

DELIVERABLE_STATES: frozenset[StudyState] = frozenset({StudyState.DONE, StudyState.SKIPPED})
_CHUNK = 500  # ids per IN (...) query


@dataclass(frozen=True)
class RetentionPolicy:
    delivered_days: float  # files kept this long after delivery
    worklist_days: float  # rows kept this long after delivery (after the files have gone)


class Action(StrEnum):
    KEEP = "keep"
    PURGE_FILES = "files"  #: delete the spool and outbox files, keep the rows
    DELETE_ROWS = "rows"  #: delete the study's work-list rows and results (files already gone)


@dataclass(frozen=True)
class StudyFacts:
    """What the rules look at for one study (see `study_facts`)."""

    study_id: int
    study_instance_uid: str
    state: StudyState
    finished_at: datetime  # state_changed_at
    last_arrival_at: datetime
    purged_at: datetime | None
    bytes_total: int  # spool bytes of its instances
    pending: int = 0  # PENDING deliveries of any of its results
    dead: int = 0  # DEAD deliveries of its current result
    sent: int = 0  # SENT deliveries of its current result
    last_sent_at: datetime | None = None

    @property
    def files_present(self) -> bool:
        """Never purged, or an instance arrived after the last purge."""
        return self.purged_at is None or self.last_arrival_at > self.purged_at


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str
    delivered_at: datetime | None  # None: not delivered (yet)


def delivered_at(facts: StudyFacts) -> datetime | None:
    """When the study's current result reached every destination; None while it has not (or
    the study is not finished, or failed)."""
    if facts.state not in DELIVERABLE_STATES or facts.pending or facts.dead:
        return None
    if facts.sent:
        return facts.last_sent_at
    return facts.finished_at  # nothing to deliver


def judge(
    facts: StudyFacts, policy: RetentionPolicy, now: datetime, ignore_age: bool = False
) -> Verdict:
    """The action for one study at `now`. `ignore_age` (disk pressure): any delivered study's
    files may go, whatever its age; rows are never deleted early."""
    delivered = delivered_at(facts)
    if delivered is None:
        return Verdict(Action.KEEP, _why_undelivered(facts), None)
    age = now - delivered
    if facts.files_present:
        if ignore_age or age >= timedelta(days=policy.delivered_days):
            return Verdict(Action.PURGE_FILES, "delivered", delivered)
        return Verdict(Action.KEEP, f"delivered {_days(age)} ago", delivered)
    if age >= timedelta(days=max(policy.worklist_days, policy.delivered_days)):
        return Verdict(Action.DELETE_ROWS, "past worklist_days", delivered)
    return Verdict(Action.KEEP, "files purged; rows kept for worklist_days", delivered)


def _why_undelivered(facts: StudyFacts) -> str:
    if facts.state not in DELIVERABLE_STATES:
        return f"study is {facts.state.value}"
    if facts.pending:
        return f"{facts.pending} deliveries PENDING"
    return f"{facts.dead} deliveries DEAD"


def _days(age: timedelta) -> str:
    return f"{age.total_seconds() / 86400:.1f} days"


# --- queries ----------------------------------------------------------------------------------


def candidate_facts(
    session: Session, policy: RetentionPolicy, now: datetime, ignore_age: bool = False
) -> list[StudyFacts]:
    """Facts of the finished, delivered-state studies that can be due for an action: those with
    files that finished at least `delivered_days` ago (any age with `ignore_age`), and purged
    ones that finished `worklist_days` ago. Finishing precedes delivery, so nothing due is
    left out; `judge` decides."""
    files_present = or_(Study.purged_at.is_(None), Study.last_arrival_at > Study.purged_at)
    rows_due = Study.state_changed_at <= now - timedelta(days=policy.worklist_days)
    if ignore_age:
        due = files_present
    else:
        files_due = Study.state_changed_at <= now - timedelta(days=policy.delivered_days)
        due = or_(and_(files_present, files_due), rows_due)
    query = (
        select(Study.id, Study.study_instance_uid, Study.state, Study.state_changed_at,
               Study.last_arrival_at, Study.purged_at, Study.bytes_total)
        .where(Study.state.in_(DELIVERABLE_STATES), due)
        .order_by(Study.state_changed_at, Study.id)
    )
    studies = session.execute(query).all()
    deliveries = _delivery_facts(session, [row.id for row in studies])
    return [
        StudyFacts(row.id, row.study_instance_uid, StudyState(row.state), row.state_changed_at,
                   row.last_arrival_at, row.purged_at, row.bytes_total,
                   **deliveries.get(row.id, {}))
        for row in studies
    ]


def _delivery_facts(session: Session, study_ids: Sequence[int]) -> dict[int, dict]:
    """{study id: pending, dead, sent, last_sent_at} over its results' delivery rows."""
    found: dict[int, dict] = {}
    for start in range(0, len(study_ids), _CHUNK):
        chunk = study_ids[start:start + _CHUNK]
        current = dict(session.execute(
            select(Result.study_id, func.max(Result.id))
            .where(Result.study_id.in_(chunk)).group_by(Result.study_id)
        ).all())
        rows = session.execute(
            select(Result.study_id, Outbound.result_id, Outbound.state, func.count(),
                   func.max(Outbound.sent_at))
            .join(Result, Result.id == Outbound.result_id)
            .where(Result.study_id.in_(chunk))
            .group_by(Result.study_id, Outbound.result_id, Outbound.state)
        ).all()
        for study_id, result_id, state, count, last_sent in rows:
            facts = found.setdefault(study_id, {"pending": 0, "dead": 0, "sent": 0,
                                                "last_sent_at": None})
            if state == OutboundState.PENDING:
                facts["pending"] += count
            elif result_id == current.get(study_id):
                facts["dead" if state == OutboundState.DEAD else "sent"] += count
                if state == OutboundState.SENT:
                    facts["last_sent_at"] = _later(facts["last_sent_at"], last_sent)
    return found


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


@dataclass(frozen=True)
class StudyFiles:
    spool: tuple[str, ...]  # relative to the spool root
    outbox: tuple[str, ...]  # relative to the outbox root


def study_files(session: Session, study_id: int, study_instance_uid: str) -> StudyFiles:
    """The files a study's rows point at: its instances in the spool, and every result's SR,
    summary image and text report in the outbox (`<study>/<sop>.dcm`, queued or not)."""
    spool = session.scalars(
        select(Instance.spool_path).where(Instance.study_id == study_id).order_by(Instance.id)
    ).all()
    outbox: dict[str, None] = {}
    for sops in session.execute(
        select(Result.sr_sop_instance_uid, Result.summary_sop_instance_uid,
               Result.text_sop_instance_uid)
        .where(Result.study_id == study_id).order_by(Result.id)
    ):
        outbox |= {f"{study_instance_uid}/{sop}.dcm": None for sop in sops if sop}
    outbox |= dict.fromkeys(session.scalars(
        select(Outbound.file_path).join(Result, Result.id == Outbound.result_id)
        .where(Result.study_id == study_id)
    ).all())
    return StudyFiles(tuple(spool), tuple(outbox))


def claim_for_purge(session: Session, facts: StudyFacts, now: datetime, reason: str) -> bool:
    """Mark the study purged at `now` if it is still as `facts` saw it (same state and last
    arrival, no PENDING delivery); False when it moved on (then leave its files alone)."""
    pending = exists().where(Outbound.result_id == Result.id, Result.study_id == Study.id,
                             Outbound.state == OutboundState.PENDING)
    result = session.execute(
        update(Study)
        .where(Study.id == facts.study_id, Study.state == facts.state,
               Study.last_arrival_at == facts.last_arrival_at, ~pending)
        .values(purged_at=now, purge_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def record_purged(session: Session, study_id: int, files: int, size_bytes: int) -> None:
    """What the purge removed (the first purge's counts plus any later one's)."""
    session.execute(
        update(Study).where(Study.id == study_id)
        .values(purged_files=func.coalesce(Study.purged_files, 0) + files,
                purged_bytes=func.coalesce(Study.purged_bytes, 0) + size_bytes)
        .execution_options(synchronize_session=False)
    )


def delete_rows(session: Session, facts: StudyFacts) -> bool:
    """Delete the study's rows (instances, results, findings, deliveries cascade) and its
    ignored-instance rows, if it is still purged with no later arrival; False otherwise."""
    result = session.execute(
        delete(Study)
        .where(Study.id == facts.study_id, Study.purged_at.is_not(None),
               Study.last_arrival_at <= Study.purged_at, Study.state == facts.state)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    session.execute(delete(IgnoredInstance).where(
        IgnoredInstance.study_instance_uid == facts.study_instance_uid))
    return True


def delete_old_ignored(session: Session, now: datetime, worklist_days: float) -> int:
    """Ignored-instance rows (other SOP classes) older than `worklist_days`; how many went."""
    cutoff = now - timedelta(days=worklist_days)
    return session.execute(
        delete(IgnoredInstance).where(IgnoredInstance.received_at < cutoff)
        .execution_options(synchronize_session=False)
    ).rowcount


def is_purged_instance(session: Session, sop_instance_uid: str) -> bool:
    """True when this instance's study was purged after it arrived (a re-sent copy of it is a
    duplicate that is not kept again)."""
    return bool(session.scalar(
        select(func.count()).select_from(Instance).join(Study, Study.id == Instance.study_id)
        .where(Instance.sop_instance_uid == sop_instance_uid, Study.purged_at.is_not(None),
               Instance.received_at <= Study.purged_at)
    ))


def plan(
    facts: Iterable[StudyFacts], policy: RetentionPolicy, now: datetime, ignore_age: bool = False
) -> list[tuple[StudyFacts, Verdict]]:
    """The studies due for an action, oldest delivered first."""
    due = [(f, judge(f, policy, now, ignore_age)) for f in facts]
    due = [(f, v) for f, v in due if v.action is not Action.KEEP]
    return sorted(due, key=lambda fv: (fv[1].delivered_at, fv[0].study_id))
