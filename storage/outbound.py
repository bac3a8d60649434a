"""The outbound queue: one row per object (SR, summary image) and destination.

PENDING -> SENT | DEAD. A sender claims due rows, oldest first, by writing its id ("host:pid")
and a lease end into `claimed_by`/`claimed_until` (a guarded UPDATE, so two senders never take the
same row); each outcome is committed as its C-STORE response arrives, which also drops the claim.
A sender that dies mid-send leaves its unanswered rows claimed until the lease passes, or until a
start-up on the same host finds the claiming process gone (`release_claims`). `next_attempt_at`
is the row's own retry time only, so a destination coming back can make every pending row due at
once (`make_due`) without touching claims. SENT is final for the sender: a row the destination
acknowledged is never claimed again, and (sop_instance_uid, destination) is unique, so an object
is never queued twice for one destination; only `resend`, an explicit admin act, queues it again.

Functions take the caller's Session and a timezone-aware `now`; they never commit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, type_coerce, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage import views, wakeups
from storage.models import Outbound, OutboundState, Result, UtcDateTime
from storage.views import DestinationCounts


class OutboundError(ValueError):
    """An unknown delivery id, or a request that would deliver an object twice."""


@dataclass(frozen=True)
class NewDelivery:
    destination: str
    kind: str  # sr | summary
    study_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    file_path: str  # relative to the outbox root


@dataclass(frozen=True)
class Delivery:
    id: int
    result_id: int
    destination: str
    kind: str
    study_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    file_path: str
    state: OutboundState
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    sent_at: datetime | None
    claimed_by: str | None = None
    claimed_until: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def enqueue(
    session: Session, result_id: int, deliveries: Sequence[NewDelivery], now: datetime
) -> int:
    """Queue deliveries, due now; one already queued for that object and destination is left
    as it is. Returns how many rows were added."""
    added = 0
    for new in deliveries:
        values = {
            "result_id": result_id,
            "destination": new.destination,
            "kind": new.kind,
            "study_instance_uid": new.study_instance_uid,
            "sop_instance_uid": new.sop_instance_uid,
            "sop_class_uid": new.sop_class_uid,
            "file_path": new.file_path,
            "state": OutboundState.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        added += _insert_ignoring_conflict(session, values)
    if added:
        wakeups.notify(session, wakeups.OUTBOUND)
    return added


def _unclaimed(now: datetime) -> Any:
    return or_(Outbound.claimed_until.is_(None), Outbound.claimed_until <= now)


def claim_due(
    session: Session,
    destination: str,
    now: datetime,
    lease_seconds: float,
    limit: int = 32,
    claimed_by: str = "",
) -> list[Delivery]:
    """Take up to `limit` PENDING rows due for `destination`, oldest first (queue order, so an
    older object never goes after a newer one), leasing them to `claimed_by` for
    `lease_seconds`. On PostgreSQL rows another sender is claiming are skipped (FOR UPDATE
    SKIP LOCKED), so senders on several hosts take disjoint batches without waiting."""
    due = (
        select(Outbound)
        .where(
            Outbound.state == OutboundState.PENDING,
            Outbound.destination == destination,
            Outbound.next_attempt_at <= now,
            _unclaimed(now),
        )
        .order_by(Outbound.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    rows = session.scalars(due).all()
    lease_until = now + timedelta(seconds=lease_seconds)
    claimed = []
    for row in rows:
        taken = session.execute(
            update(Outbound)
            .where(Outbound.id == row.id, Outbound.state == OutboundState.PENDING,
                   _unclaimed(now))
            .values(claimed_by=claimed_by, claimed_until=lease_until)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            claimed.append(_view(row))
    return claimed


def mark_sent(session: Session, delivery_id: int, now: datetime) -> bool:
    """The destination acknowledged the object: SENT, claim and last error cleared. False when
    the row was no longer PENDING (someone else recorded it first)."""
    return bool(session.execute(
        update(Outbound)
        .where(Outbound.id == delivery_id, Outbound.state == OutboundState.PENDING)
        .values(state=OutboundState.SENT, sent_at=now, attempts=Outbound.attempts + 1,
                last_error=None, claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    ).rowcount)


def mark_failed(
    session: Session, delivery_id: int, error: str, retry_at: datetime | None, now: datetime
) -> OutboundState:
    """Record a failed attempt (claim dropped): PENDING again at `retry_at`, or DEAD when it is
    None."""
    state = OutboundState.DEAD if retry_at is None else OutboundState.PENDING
    session.execute(
        update(Outbound)
        .where(Outbound.id == delivery_id, Outbound.state == OutboundState.PENDING)
        .values(
            state=state,
            attempts=Outbound.attempts + 1,
            last_error=error[:2000],
            next_attempt_at=retry_at or now,
            claimed_by=None,
            claimed_until=None,
        )
        .execution_options(synchronize_session=False)
    )
    return state


def release(session: Session, delivery_ids: Sequence[int], claimed_by: str | None = None) -> None:
    """Drop the claim on rows that were claimed but not attempted (no attempt counted); with
    `claimed_by`, only rows still claimed by it (another sender may hold them by now)."""
    if delivery_ids:
        ours = () if claimed_by is None else (Outbound.claimed_by == claimed_by,)
        session.execute(
            update(Outbound)
            .where(Outbound.id.in_(list(delivery_ids)), *ours)
            .values(claimed_by=None, claimed_until=None)
            .execution_options(synchronize_session=False)
        )
        wakeups.notify(session, wakeups.OUTBOUND)


def keep_claim(
    session: Session, delivery_id: int, claimed_by: str, lease_seconds: float, now: datetime
) -> bool:
    """Just before sending: extend the claim of `claimed_by` on a PENDING row; False when it
    no longer holds it (the claim was taken back, e.g. its heartbeat looked stale, and another
    sender may be sending it): then it must not be sent."""
    return bool(session.execute(
        update(Outbound)
        .where(Outbound.id == delivery_id, Outbound.state == OutboundState.PENDING,
               Outbound.claimed_by == claimed_by)
        .values(claimed_until=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    ).rowcount)


def claim_holders(session: Session) -> list[str]:
    """The distinct `claimed_by` ids that hold PENDING rows now."""
    return list(session.scalars(
        select(Outbound.claimed_by).where(
            Outbound.state == OutboundState.PENDING, Outbound.claimed_by.is_not(None)
        ).distinct()
    ))


def release_claims(session: Session, holders: Sequence[str]) -> int:
    """Return every row claimed by one of `holders` (senders known to be gone); the count."""
    if not holders:
        return 0
    released = session.execute(
        update(Outbound)
        .where(Outbound.claimed_by.in_(list(holders)), Outbound.state == OutboundState.PENDING)
        .values(claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    if released:
        wakeups.notify(session, wakeups.OUTBOUND)
    return released


def make_due(session: Session, destination: str, now: datetime) -> int:
    """Every unclaimed PENDING row for `destination` due now (the destination came back);
    returns how many were waiting for a later time."""
    return session.execute(
        update(Outbound)
        .where(
            Outbound.state == OutboundState.PENDING,
            Outbound.destination == destination,
            Outbound.next_attempt_at > now,
            _unclaimed(now),
        )
        .values(next_attempt_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount


def next_due_at(session: Session, destination: str) -> datetime | None:
    """When the earliest PENDING row for `destination` can be claimed: its retry time, or its
    claim's end if later (None: nothing pending)."""
    when = case(
        (and_(Outbound.claimed_until.is_not(None),
              Outbound.claimed_until > Outbound.next_attempt_at), Outbound.claimed_until),
        else_=Outbound.next_attempt_at,
    )
    return session.scalar(
        select(func.min(type_coerce(when, UtcDateTime()))).where(
            Outbound.state == OutboundState.PENDING, Outbound.destination == destination
        )
    )


def retry(
    session: Session, now: datetime, ids: Sequence[int] = (), all_dead: bool = False,
    destination: str | None = None,
) -> list[int]:
    """Make DEAD (or waiting PENDING) rows due now with a fresh set of attempts; the ids.
    `all_dead` takes every DEAD row (only those for `destination` when given). A SENT row is
    refused: the destination has it already."""
    targets: list[int] = []
    if all_dead:
        dead = select(Outbound.id).where(Outbound.state == OutboundState.DEAD)
        if destination is not None:
            dead = dead.where(Outbound.destination == destination)
        targets += session.scalars(dead.order_by(Outbound.id))
    for delivery_id in ids:
        row = session.get(Outbound, delivery_id)
        if row is None:
            raise OutboundError(f"no outbound delivery with id {delivery_id}")
        if row.state == OutboundState.SENT:
            raise OutboundError(
                f"delivery {delivery_id} was acknowledged by {row.destination} at "
                f"{row.sent_at}; it is not sent twice"
            )
        targets.append(delivery_id)
    for delivery_id in targets:
        session.execute(
            update(Outbound)
            .where(Outbound.id == delivery_id, Outbound.state != OutboundState.SENT)
            .values(state=OutboundState.PENDING, attempts=0, next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
    return targets


def resend(
    session: Session,
    study_instance_uid: str,
    wanted: Mapping[str, Collection[str]],
    now: datetime,
) -> list[int]:
    """Queue the study's current (newest) result again: for each destination name in `wanted`,
    each of its objects whose kind (sr, summary) is wanted. A row that exists (even SENT) goes
    back to PENDING, due now, with fresh attempts and a note in `last_error`; a destination
    that never had the object gets a new row. A row a sender holds right now is left alone.
    Returns the ids queued. Raises OutboundError when the study has no result, or its result
    was never queued anywhere (nothing in the outbox to send)."""
    result_id = session.scalar(
        select(Result.id).where(Result.study_instance_uid == study_instance_uid)
        .order_by(Result.version.desc()).limit(1)
    )
    if result_id is None:
        raise OutboundError(f"study {study_instance_uid} has no result to send")
    rows = session.scalars(
        select(Outbound).where(Outbound.result_id == result_id).order_by(Outbound.id)
    ).all()
    objects = {row.sop_instance_uid: row for row in rows}
    if not objects:
        raise OutboundError(
            f"the result of study {study_instance_uid} was never queued: no SR or summary "
            "in the outbox to send"
        )
    queued = []
    for name, kinds in wanted.items():
        for template in objects.values():
            if template.kind in kinds:
                queued += _requeue(session, result_id, template, name, now)
    return queued


def _requeue(
    session: Session, result_id: int, template: Outbound, destination: str, now: datetime
) -> list[int]:
    row = session.scalar(select(Outbound).where(
        Outbound.sop_instance_uid == template.sop_instance_uid,
        Outbound.destination == destination,
    ))
    if row is None:
        enqueue(session, result_id, [NewDelivery(
            destination, template.kind, template.study_instance_uid, template.sop_instance_uid,
            template.sop_class_uid, template.file_path)], now)
        return [session.scalar(select(Outbound.id).where(
            Outbound.sop_instance_uid == template.sop_instance_uid,
            Outbound.destination == destination,
        ))]
    if row.claimed_until is not None and row.claimed_until > now:
        return []  # a sender is sending it right now
    was = f"was {row.state.value}" + (f" at {row.sent_at:%Y-%m-%d %H:%M:%S}Z"
                                      if row.sent_at else "")
    session.execute(
        update(Outbound).where(Outbound.id == row.id)
        .values(state=OutboundState.PENDING, attempts=0, next_attempt_at=now, sent_at=None,
                last_error=f"resend requested by an administrator ({was})",
                claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
    return [row.id]


def destination_counts(session: Session) -> dict[str, DestinationCounts]:
    """Per destination name: PENDING, SENT and DEAD rows and when the oldest PENDING was
    queued."""
    query = select(Outbound.destination, Outbound.state, func.count(),
                   func.min(Outbound.created_at)).group_by(Outbound.destination, Outbound.state)
    return views.destination_counts(session.execute(query))


def list_deliveries(
    session: Session, state: OutboundState | None = None, limit: int = 200
) -> list[Delivery]:
    """Deliveries, newest first, optionally only those in `state`."""
    query = select(Outbound).order_by(Outbound.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Outbound.state == state)
    return [_view(row) for row in session.scalars(query)]


def deliveries_for_result(session: Session, result_id: int) -> list[Delivery]:
    rows = session.scalars(
        select(Outbound).where(Outbound.result_id == result_id).order_by(Outbound.id)
    )
    return [_view(row) for row in rows]


def state_counts(session: Session) -> dict[OutboundState, int]:
    rows = session.execute(select(Outbound.state, func.count()).group_by(Outbound.state))
    return views.counts_by_state(OutboundState, rows)


def _insert_ignoring_conflict(session: Session, values: dict[str, Any]) -> int:
    dialect = session.get_bind().dialect.name
    keys = ["sop_instance_uid", "destination"]
    if dialect == "sqlite":
        statement: Any = sqlite.insert(Outbound).values(values).on_conflict_do_nothing(
            index_elements=keys
        )
    elif dialect == "postgresql":
        statement = postgresql.insert(Outbound).values(values).on_conflict_do_nothing(
            index_elements=keys
        )
    else:
        exists = session.scalar(
            select(func.count()).where(
                Outbound.sop_instance_uid == values["sop_instance_uid"],
                Outbound.destination == values["destination"],
            )
        )
        if exists:
            return 0
        statement = insert(Outbound).values(values)
    # RETURNING, not rowcount: with an implicit RETURNING psycopg reports rowcount -1
    return len(session.execute(statement.returning(Outbound.id)).all())


def _view(row: Outbound) -> Delivery:
    return Delivery(**{f.name: getattr(row, f.name) for f in fields(Delivery)})
