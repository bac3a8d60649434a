"""The outbound queue: one row per object (SR, summary image) and destination.

PENDING -> SENT | DEAD. A sender claims due rows by pushing their `next_attempt_at` forward by a
lease (a guarded UPDATE, so two senders never take the same row); a sender that dies mid-send
leaves the row due again once the lease passes. SENT is final: a row the destination
acknowledged is never claimed again, and (sop_instance_uid, destination) is unique, so an object
is never queued twice for one destination.

Functions take the caller's Session and a timezone-aware `now`; they never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import Outbound, OutboundState


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
    return added


def claim_due(
    session: Session, destination: str, now: datetime, lease_seconds: float, limit: int = 32
) -> list[Delivery]:
    """Take up to `limit` PENDING rows due for `destination`, leasing them for `lease_seconds`."""
    rows = session.scalars(
        select(Outbound)
        .where(
            Outbound.state == OutboundState.PENDING,
            Outbound.destination == destination,
            Outbound.next_attempt_at <= now,
        )
        .order_by(Outbound.next_attempt_at, Outbound.id)
        .limit(limit)
    ).all()
    lease_until = now + timedelta(seconds=lease_seconds)
    claimed = []
    for row in rows:
        taken = session.execute(
            update(Outbound)
            .where(
                Outbound.id == row.id,
                Outbound.state == OutboundState.PENDING,
                Outbound.next_attempt_at == row.next_attempt_at,
            )
            .values(next_attempt_at=lease_until)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken:
            claimed.append(_view(row))
    return claimed


def mark_sent(session: Session, delivery_id: int, now: datetime) -> None:
    session.execute(
        update(Outbound)
        .where(Outbound.id == delivery_id, Outbound.state == OutboundState.PENDING)
        .values(state=OutboundState.SENT, sent_at=now, attempts=Outbound.attempts + 1)
        .execution_options(synchronize_session=False)
    )


def mark_failed(
    session: Session, delivery_id: int, error: str, retry_at: datetime | None, now: datetime
) -> OutboundState:
    """Record a failed attempt: PENDING again at `retry_at`, or DEAD when it is None."""
    state = OutboundState.DEAD if retry_at is None else OutboundState.PENDING
    session.execute(
        update(Outbound)
        .where(Outbound.id == delivery_id, Outbound.state == OutboundState.PENDING)
        .values(
            state=state,
            attempts=Outbound.attempts + 1,
            last_error=error[:2000],
            next_attempt_at=retry_at or now,
        )
        .execution_options(synchronize_session=False)
    )
    return state


def next_due_at(session: Session, destination: str) -> datetime | None:
    """When the earliest PENDING row for `destination` is due (None: nothing pending)."""
    return session.scalar(
        select(func.min(Outbound.next_attempt_at)).where(
            Outbound.state == OutboundState.PENDING, Outbound.destination == destination
        )
    )


def retry(
    session: Session, now: datetime, ids: Sequence[int] = (), all_dead: bool = False
) -> list[int]:
    """Make DEAD (or waiting PENDING) rows due now with a fresh set of attempts; the ids.
    A SENT row is refused: the destination has it already."""
    targets: list[int] = []
    if all_dead:
        targets += session.scalars(
            select(Outbound.id).where(Outbound.state == OutboundState.DEAD).order_by(Outbound.id)
        )
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
    counts = dict.fromkeys(OutboundState, 0)
    for state, count in session.execute(
        select(Outbound.state, func.count()).group_by(Outbound.state)
    ):
        counts[OutboundState(state)] = count
    return counts


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
    return session.execute(statement).rowcount


def _view(row: Outbound) -> Delivery:
    return Delivery(**{f.name: getattr(row, f.name) for f in fields(Delivery)})
