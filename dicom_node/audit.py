"""The audit trail: every change made from the console or the CLI (who, when, from where,
what, the state before and after), written in the same transaction as the change it records.

Used by the service layer (dicom_node.users, dicom_node.studies, dicom_node.destinations, the
threshold commands); read by the console's Audit page. Values are JSON; never patient names or
IDs (UIDs, user names, versions and states only).
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from storage import audit as audit_rows
from storage.db import Database

ORIGINS = ("console", "cli")


@dataclass(frozen=True)
class Actor:
    """Who makes a change: a console user (origin "console") or the OS user running a CLI
    command (origin "cli")."""

    name: str
    origin: str

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise ValueError(f"actor origin must be one of {ORIGINS}, got {self.origin!r}")


def cli_actor() -> Actor:
    """The OS user running the command (the CLI has no sign-in: the host's login is it)."""
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = "unknown"
    return Actor(name, "cli")


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor: str
    origin: str
    action: str
    target: str | None
    before: Any
    after: Any


def record(session: Session, actor: Actor, action: str, target: str | None, *,
           before: Any = None, after: Any = None, now: datetime) -> int:
    """Add one audit row inside the caller's transaction (so the row exists exactly when the
    change does). `action` is "<thing>.<verb>", e.g. "study.retry"; `before`/`after` are any
    JSON-able values (datetimes become ISO text). Returns the row id."""
    return audit_rows.add(
        session, at=now, actor=actor.name, origin=actor.origin, action=action, target=target,
        before_json=_json(before), after_json=_json(after),
    )


def recent(database: Database, limit: int = 50, offset: int = 0,
           action_prefix: str | None = None) -> tuple[list[AuditEntry], int]:
    """(entries newest first, total count) for the Audit page; `action_prefix` filters, e.g.
    "user." for account changes."""
    with database.read_only() as session:
        rows = audit_rows.recent(session, limit, offset, action_prefix)
        total = audit_rows.count(session, action_prefix)
    return [AuditEntry(r.id, r.at, r.actor, r.origin, r.action, r.target, _load(r.before_json),
                       _load(r.after_json)) for r in rows], total


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str, sort_keys=True)


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)
