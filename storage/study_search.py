"""The work list as the console pages it: studies filtered by state, arrival time, a finding
present in the current result, calling AE title, Study Instance UID or Accession Number (by
its SHA-256), with each study's decision summary. SQL only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from storage.models import Instance, Result, ResultFinding, Study
from storage.states import StudyState


@dataclass(frozen=True)
class StudyQuery:
    state: StudyState | None = None
    arrived_from: datetime | None = None  # last arrival at or after
    arrived_before: datetime | None = None  # last arrival before
    finding_present: str | None = None  # a catalogue label present in the current result
    calling_ae_title: str | None = None
    study_instance_uid: str | None = None
    accession_sha256: str | None = None  # either this or the UID may match (one search box)
    limit: int = 50
    offset: int = 0


@dataclass(frozen=True)
class StudyRow:
    study_instance_uid: str
    state: StudyState
    first_arrival_at: datetime
    last_arrival_at: datetime
    instance_count: int
    calling_ae_title: str | None
    attempts: int
    last_error: str | None
    skip_reason: str | None
    analysed: bool | None  # None: no result yet
    present: tuple[str, ...]  # labels present in the current result
    findings: int  # findings in the current result


def _latest_result_id() -> object:
    return (select(func.max(Result.id)).where(Result.study_id == Study.id)
            .correlate(Study).scalar_subquery())


def _filtered(query: StudyQuery) -> Select:
    statement = select(Study)
    if query.state is not None:
        statement = statement.where(Study.state == query.state)
    if query.arrived_from is not None:
        statement = statement.where(Study.last_arrival_at >= query.arrived_from)
    if query.arrived_before is not None:
        statement = statement.where(Study.last_arrival_at < query.arrived_before)
    if query.calling_ae_title:
        statement = statement.where(exists().where(
            Instance.study_id == Study.id, Instance.calling_ae_title == query.calling_ae_title))
    if query.finding_present:
        statement = statement.where(exists().where(
            ResultFinding.result_id == _latest_result_id(),
            ResultFinding.label == query.finding_present, ResultFinding.present.is_(True)))
    matches = []
    if query.study_instance_uid:
        matches.append(Study.study_instance_uid == query.study_instance_uid)
    if query.accession_sha256:
        matches.append(exists().where(Instance.study_id == Study.id,
                                      Instance.accession_sha256 == query.accession_sha256))
    if matches:
        statement = statement.where(or_(*matches))
    return statement


def search(session: Session, query: StudyQuery) -> tuple[list[StudyRow], int]:
    """(one page of studies, newest last arrival first; how many match in all)."""
    base = _filtered(query)
    total = int(session.scalar(select(func.count()).select_from(base.subquery())) or 0)
    studies = list(session.scalars(
        base.order_by(Study.last_arrival_at.desc(), Study.id.desc())
        .limit(query.limit).offset(query.offset)))
    ids = [s.id for s in studies]
    callers = _calling_aes(session, ids)
    decisions = _decisions(session, ids)
    rows = [StudyRow(
        s.study_instance_uid, StudyState(s.state), s.first_arrival_at, s.last_arrival_at,
        s.instance_count, callers.get(s.id), s.attempts, s.last_error, s.skip_reason,
        *decisions.get(s.id, (None, (), 0))) for s in studies]
    return rows, total


def calling_ae_titles(session: Session) -> list[str]:
    """Every calling AE title seen (for the filter's choices)."""
    query = (select(Instance.calling_ae_title).where(Instance.calling_ae_title.is_not(None))
             .distinct().order_by(Instance.calling_ae_title))
    return list(session.scalars(query))


def _calling_aes(session: Session, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    query = (select(Instance.study_id, func.min(Instance.calling_ae_title))
             .where(Instance.study_id.in_(ids)).group_by(Instance.study_id))
    return {study_id: ae for study_id, ae in session.execute(query) if ae}


def _decisions(session: Session, ids: Sequence[int]
               ) -> dict[int, tuple[bool, tuple[str, ...], int]]:
    """Per study id: (analysed, labels present, findings) of its newest result."""
    if not ids:
        return {}
    latest = (select(Result.study_id, func.max(Result.id).label("rid"))
              .where(Result.study_id.in_(ids)).group_by(Result.study_id).subquery())
    query = (select(latest.c.study_id, ResultFinding.label, ResultFinding.present)
             .select_from(latest)
             .outerjoin(ResultFinding, and_(ResultFinding.result_id == latest.c.rid))
             .order_by(latest.c.study_id, ResultFinding.position))
    found: dict[int, tuple[list[str], int]] = {}
    for study_id, label, present in session.execute(query):
        labels, count = found.get(study_id, ([], 0))
        if label is not None:
            count += 1
            if present:
                labels.append(label)
        found[study_id] = (labels, count)
    return {sid: (count > 0, tuple(labels), count) for sid, (labels, count) in found.items()}


def accession_sha256(accession_number: object) -> str | None:
    """The SHA-256 (hex) of an Accession Number as stored (trailing padding removed); None for
    an empty or absent one. What the work list keeps instead of the number."""
    import hashlib

    text = str(accession_number or "").strip()
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest() if text else None
