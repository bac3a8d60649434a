"""The audit trail's rows (SQL only; dicom_node.audit is the service that writes them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import AuditEvent


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    origin: str
    action: str
    target: str | None
    before_json: str | None
    after_json: str | None


def add(session: Session, *, at: datetime, actor: str, origin: str, action: str,
        target: str | None, before_json: str | None, after_json: str | None) -> int:
    row = AuditEvent(at=at, actor=actor, origin=origin, action=action, target=target,
                     before_json=before_json, after_json=after_json)
    session.add(row)
    session.flush()
    return row.id


def recent(session: Session, limit: int, offset: int = 0,
           action_prefix: str | None = None) -> list[AuditRow]:
    """Newest first; `action_prefix` keeps e.g. only "study." actions."""
    query = select(AuditEvent).order_by(AuditEvent.at.desc(), AuditEvent.id.desc())
    if action_prefix:
        query = query.where(AuditEvent.action.startswith(action_prefix))
    rows = session.scalars(query.limit(limit).offset(offset))
    return [AuditRow(r.id, r.at, r.actor, r.origin, r.action, r.target, r.before_json,
                     r.after_json) for r in rows]


def count(session: Session, action_prefix: str | None = None) -> int:
    query = select(func.count()).select_from(AuditEvent)
    if action_prefix:
        query = query.where(AuditEvent.action.startswith(action_prefix))
    return int(session.scalar(query) or 0)
