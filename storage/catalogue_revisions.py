"""Catalogue revisions: findings added to the findings catalogue from the prompt workbench,
and later enabled or disabled, each with who, when and why.

The configured TOML file stays the base catalogue and is never rewritten; the node's catalogue
is the file's findings followed by the added ones, in revision order (see
dicom_node.findings). Nothing is edited in place: every change is a new numbered revision.
Storage knows nothing of the catalogue format: callers validate entries. Functions take the
caller's Session and never commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.models import CatalogueRevision

ACTIONS = ("add", "enable", "disable")


class RevisionError(ValueError):
    """An unknown action or a revision number taken at the same time; the message says which."""


@dataclass(frozen=True)
class Revision:
    revision: int
    created_at: datetime
    author: str
    note: str
    action: str
    label: str
    entry: Mapping[str, Any] | None  # the [[finding]] table, for "add"
    provenance: Mapping[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "created_at": self.created_at.isoformat(),
            "author": self.author,
            "note": self.note,
            "action": self.action,
            "label": self.label,
            "entry": dict(self.entry) if self.entry is not None else None,
            "provenance": dict(self.provenance),
        }


def add_revision(
    session: Session,
    *,
    action: str,
    label: str,
    author: str,
    note: str,
    now: datetime,
    entry: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> Revision:
    """Record the next revision (numbered one above the highest)."""
    if action not in ACTIONS:
        raise RevisionError(f"unknown catalogue action {action!r} ({', '.join(ACTIONS)})")
    highest = session.scalar(select(func.max(CatalogueRevision.revision))) or 0
    row = CatalogueRevision(
        revision=highest + 1, created_at=now, author=author, note=note, action=action,
        label=label, entry_json=None if entry is None else json.dumps(dict(entry), sort_keys=True),
        provenance_json=json.dumps(dict(provenance or {}), sort_keys=True, default=str),
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise RevisionError(
            f"catalogue revision {highest + 1} was made by someone else at the same time; "
            "try again"
        ) from None
    return _view(row)


def revisions(session: Session) -> list[Revision]:
    """Every revision, oldest first."""
    rows = session.scalars(select(CatalogueRevision).order_by(CatalogueRevision.revision))
    return [_view(r) for r in rows]


def _view(row: CatalogueRevision) -> Revision:
    return Revision(
        revision=row.revision, created_at=row.created_at, author=row.author, note=row.note,
        action=row.action, label=row.label,
        entry=None if row.entry_json is None else json.loads(row.entry_json),
        provenance=json.loads(row.provenance_json),
    )
