"""Threshold profiles: immutable, numbered versions of the per-finding thresholds, exactly one
of them active, every creation and activation on record.

Nothing is edited in place. `set_threshold` and calibration create a new version (a copy of a
base version with changes); undoing a change is activating an older version. The active
version is the one named by the newest `threshold_activation` row.

The worker calls `active_profile(session)` once per study: one indexed query, so a running
node uses a newly activated version from its next study on, without a restart.

Storage knows nothing of the findings catalogue: callers validate finding labels and value
ranges, and pass the catalogue's default thresholds for the very first version.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.models import ThresholdActivation, ThresholdProfile

SYSTEM_AUTHOR = "system"


class ProfileError(ValueError):
    """An unknown version, an invalid threshold, or no profile yet; the message says which."""


@dataclass(frozen=True)
class ProfileSnapshot:
    """What the worker needs: the active version and its thresholds."""

    version: int
    thresholds: Mapping[str, float]

    @property
    def label(self) -> str:
        return f"v{self.version}"

    def threshold_for(self, finding: str, default: float) -> float:
        """The profile's threshold, or `default` (the catalogue's) for a finding it lacks."""
        return self.thresholds.get(finding, default)


@dataclass(frozen=True)
class ProfileVersion:
    version: int
    thresholds: Mapping[str, float]
    author: str
    created_at: datetime
    note: str | None
    method: str
    provenance: Mapping[str, Any]
    based_on_version: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "thresholds": dict(self.thresholds),
            "author": self.author,
            "created_at": self.created_at.isoformat(),
            "note": self.note,
            "method": self.method,
            "provenance": dict(self.provenance),
            "based_on_version": self.based_on_version,
        }


@dataclass(frozen=True)
class Activation:
    version: int
    activated_at: datetime
    activated_by: str
    note: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "activated_at": self.activated_at.isoformat(),
            "activated_by": self.activated_by,
            "note": self.note,
        }


@dataclass(frozen=True)
class ThresholdChange:
    finding: str
    before: float | None  # None: the finding is not in the older version
    after: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"finding": self.finding, "before": self.before, "after": self.after}


@dataclass(frozen=True)
class HistoryEvent:
    at: datetime
    kind: str  # "created" | "activated"
    version: int
    who: str
    note: str | None
    method: str | None = None
    changes: tuple[ThresholdChange, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "event": self.kind,
            "version": self.version,
            "who": self.who,
            "note": self.note,
            "method": self.method,
            "changes": [c.as_dict() for c in self.changes],
        }


def active_profile(
    session: Session, defaults: Mapping[str, float] | None = None
) -> ProfileSnapshot:
    """The active version's thresholds (one query). With no profile at all yet, `defaults`
    (the catalogue's default thresholds) become version 1, active, by "system"; the caller
    commits. Without `defaults` that case raises ProfileError."""
    row = session.execute(
        select(ThresholdProfile.version, ThresholdProfile.thresholds_json)
        .join(ThresholdActivation, ThresholdActivation.profile_version == ThresholdProfile.version)
        .order_by(ThresholdActivation.id.desc())
        .limit(1)
    ).first()
    if row is not None:
        return ProfileSnapshot(row.version, json.loads(row.thresholds_json))
    if defaults is None:
        raise ProfileError("no threshold profile yet: create one with `dicom-node thresholds show`")
    created = ensure_initial_profile(session, defaults)
    return ProfileSnapshot(created.version, created.thresholds)


def ensure_initial_profile(session: Session, defaults: Mapping[str, float]) -> ProfileVersion:
    """Version 1 from the catalogue defaults, active, unless a profile exists already; returns
    the active version either way, also when another process created version 1 at the same
    time (raises ProfileError only when that other version is still not active)."""
    current = _active_version(session)
    if current is not None:
        return get_profile(session, current)
    try:
        with session.begin_nested():
            created = create_profile(
                session,
                defaults,
                author=SYSTEM_AUTHOR,
                method="defaults",
                note="catalogue default thresholds",
                provenance={"source": "findings catalogue"},
            )
            activate(session, created.version, by=SYSTEM_AUTHOR, note="first profile")
    except ProfileError:
        # Several workers meeting their first study at once all try to create version 1; on
        # PostgreSQL the losers' INSERT waits for the winner's commit, so its profile is
        # visible now and is the one to use.
        current = _active_version(session)
        if current is None:
            raise
        return get_profile(session, current)
    return created


def create_profile(
    session: Session,
    thresholds: Mapping[str, float],
    *,
    author: str,
    method: str,
    note: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    based_on: int | None = None,
) -> ProfileVersion:
    """A new version numbered one above the highest; not activated."""
    cleaned = {str(k): _valid_threshold(k, v) for k, v in sorted(thresholds.items())}
    if not cleaned:
        raise ProfileError("a profile needs at least one threshold")
    if not author.strip():
        raise ProfileError("a profile needs an author")
    highest = session.scalar(select(func.max(ThresholdProfile.version))) or 0
    row = ThresholdProfile(
        version=highest + 1,
        thresholds_json=json.dumps(cleaned, sort_keys=True),
        author=author.strip(),
        created_at=datetime.now(UTC),
        note=note,
        method=method,
        provenance_json=json.dumps(dict(provenance or {}), sort_keys=True, default=str),
        based_on_version=based_on,
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise ProfileError(
            f"version {highest + 1} was created by someone else at the same time; try again"
        ) from None
    return _version(row)


def derive_profile(
    session: Session,
    changes: Mapping[str, float],
    *,
    author: str,
    method: str,
    note: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    base: int | None = None,
) -> ProfileVersion:
    """A new version: `base` (default: the active version) with `changes` applied."""
    base = _active_version(session) if base is None else base
    if base is None:
        raise ProfileError("no threshold profile yet to derive from")
    thresholds = {**get_profile(session, base).thresholds, **changes}
    return create_profile(
        session,
        thresholds,
        author=author,
        method=method,
        note=note,
        provenance=provenance,
        based_on=base,
    )


def activate(session: Session, version: int, *, by: str, note: str | None = None) -> bool:
    """Make `version` the active one; False (and nothing recorded) if it already is."""
    get_profile(session, version)  # raises for an unknown version
    if _active_version(session) == version:
        return False
    session.add(
        ThresholdActivation(
            profile_version=version, activated_at=datetime.now(UTC), activated_by=by, note=note
        )
    )
    session.flush()
    return True


def get_profile(session: Session, version: int) -> ProfileVersion:
    row = session.scalar(select(ThresholdProfile).where(ThresholdProfile.version == version))
    if row is None:
        known = session.scalars(select(ThresholdProfile.version).order_by(ThresholdProfile.version))
        listed = ", ".join(str(v) for v in known) or "none"
        raise ProfileError(f"no threshold profile version {version} (versions: {listed})")
    return _version(row)


def active_version(session: Session) -> int | None:
    return _active_version(session)


def list_profiles(session: Session) -> list[ProfileVersion]:
    rows = session.scalars(select(ThresholdProfile).order_by(ThresholdProfile.version))
    return [_version(r) for r in rows]


def activations(session: Session) -> list[Activation]:
    rows = session.scalars(select(ThresholdActivation).order_by(ThresholdActivation.id))
    return [Activation(r.profile_version, r.activated_at, r.activated_by, r.note) for r in rows]


def diff(older: ProfileVersion, newer: ProfileVersion) -> list[ThresholdChange]:
    """Findings whose threshold differs (or exists in only one of the two), sorted by label."""
    names = sorted(set(older.thresholds) | set(newer.thresholds))
    return [
        ThresholdChange(n, older.thresholds.get(n), newer.thresholds.get(n))
        for n in names
        if older.thresholds.get(n) != newer.thresholds.get(n)
    ]


def history(session: Session) -> list[HistoryEvent]:
    """Every creation (with its changes against the version it was based on) and every
    activation, oldest first."""
    versions = {p.version: p for p in list_profiles(session)}
    events = []
    for p in versions.values():
        base = versions.get(p.based_on_version) if p.based_on_version else None
        changes = tuple(diff(base, p)) if base else ()
        events.append(
            HistoryEvent(p.created_at, "created", p.version, p.author, p.note, p.method, changes)
        )
    events += [
        HistoryEvent(a.activated_at, "activated", a.version, a.activated_by, a.note)
        for a in activations(session)
    ]
    # creation before activation at the same instant, then by version
    return sorted(events, key=lambda e: (e.at, e.kind != "created", e.version))


def _active_version(session: Session) -> int | None:
    return session.scalar(
        select(ThresholdActivation.profile_version).order_by(ThresholdActivation.id.desc()).limit(1)
    )


def _valid_threshold(finding: object, value: object) -> float:
    if not isinstance(finding, str) or not finding.strip():
        raise ProfileError(f"finding label {finding!r} must be a non-empty string")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProfileError(f"threshold for {finding} must be a finite number, got {value!r}")
    return float(value)


def _version(row: ThresholdProfile) -> ProfileVersion:
    return ProfileVersion(
        version=row.version,
        thresholds=json.loads(row.thresholds_json),
        author=row.author,
        created_at=row.created_at,
        note=row.note,
        method=row.method,
        provenance=json.loads(row.provenance_json),
        based_on_version=row.based_on_version,
    )
