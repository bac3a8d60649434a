"""Ignored instances: the work-list record of storage objects the node acknowledged without
keeping them (SOP classes it does not analyse). They belong to no Study row on purpose: a CT or
key-object note forwarded with a chest study must not create, reopen or delay any work.

Functions take the caller's Session and do not commit (as in storage.worklist).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import IgnoredInstance


@dataclass(frozen=True)
class IgnoredRecord:
    sop_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    calling_ae_title: str | None


def record_ignored(session: Session, record: IgnoredRecord, now: datetime) -> bool:
    """Insert the row for `record` unless its SOP Instance UID is already recorded.

    Returns True when a row was inserted, False for a repeat (the first arrival is kept).
    """
    values = {
        "sop_instance_uid": record.sop_instance_uid,
        "study_instance_uid": record.study_instance_uid,
        "sop_class_uid": record.sop_class_uid,
        "calling_ae_title": record.calling_ae_title,
        "received_at": now,
    }
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        module = sqlite if dialect == "sqlite" else postgresql
        statement = (
            module.insert(IgnoredInstance)
            .values(values)
            .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        )
        # RETURNING, not rowcount: with an implicit RETURNING psycopg reports rowcount -1
        inserted = statement.returning(IgnoredInstance.id)
        return session.execute(inserted).first() is not None
    known = session.scalar(
        select(func.count()).where(IgnoredInstance.sop_instance_uid == record.sop_instance_uid)
    )
    if known:
        return False
    session.execute(insert(IgnoredInstance).values(values))
    return True


def ignored_counts(session: Session, study_instance_uid: str | None = None) -> dict[str, int]:
    """{SOP Class UID: count} of ignored instances, for one study or all of them."""
    query = select(IgnoredInstance.sop_class_uid, func.count()).group_by(
        IgnoredInstance.sop_class_uid
    )
    if study_instance_uid is not None:
        query = query.where(IgnoredInstance.study_instance_uid == study_instance_uid)
    return {sop_class: count for sop_class, count in session.execute(query)}
