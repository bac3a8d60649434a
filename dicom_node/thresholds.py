"""The service layer for threshold profiles, shared by the CLI (`dicom-node thresholds ...`)
and the console: history, diff of any two versions, the impact of a proposed threshold before
it is saved, saving it as a new version (note required) and activating a version (a separate
step). No SQL here: `storage.profiles`, `storage.results` and `storage.calibration_sets` do
the queries.

Impact preview, from what is already stored (nothing is scored again):
- recent work: each of the last N analysed studies' stored study-level probability of the
  finding, decided at the active version's threshold and at the proposed one (present when
  probability >= threshold); the studies whose decision differs are counted by direction;
- calibration: where `thresholds calibrate` stored a labelled set, sensitivity and
  specificity at both thresholds with Wilson score 95% intervals (Wilson, E. B. 1927; exact
  to compute for one proportion, and unlike a percentile bootstrap it does not collapse to a
  point at 0 or 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dicom_node.audit import Actor, record
from ml.catalogue import MAX_PROBABILITY, MIN_PROBABILITY, Catalogue
from ml.metrics import DEFAULT_CONFIDENCE, wilson_interval
from storage import calibration_sets, profiles, results
from storage.db import Database
from storage.profiles import HistoryEvent, ProfileError, ProfileVersion, ThresholdChange

DEFAULT_RECENT_STUDIES = 200
INTERVAL_METHOD = "Wilson score 95%"


@dataclass(frozen=True)
class History:
    active_version: int
    versions: tuple[ProfileVersion, ...]
    events: tuple[HistoryEvent, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "active_version": self.active_version,
            "versions": [v.as_dict() for v in self.versions],
            "events": [e.as_dict() for e in self.events],
        }


@dataclass(frozen=True)
class VersionDiff:
    older: ProfileVersion
    newer: ProfileVersion
    changes: tuple[ThresholdChange, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": self.older.as_dict(),
            "b": self.newer.as_dict(),
            "changes": [c.as_dict() for c in self.changes],
        }


@dataclass(frozen=True)
class Proportion:
    """successes / total with its interval (NaN-free: None where total is 0)."""

    successes: int
    total: int
    estimate: float | None
    lower: float | None
    upper: float | None

    @classmethod
    def of(cls, successes: int, total: int) -> Proportion:
        if total == 0:
            return cls(successes, total, None, None, None)
        lower, upper = wilson_interval(successes, total, DEFAULT_CONFIDENCE)
        return cls(successes, total, successes / total, lower, upper)

    def as_dict(self) -> dict[str, Any]:
        return {
            "successes": self.successes, "total": self.total, "estimate": self.estimate,
            "lower": self.lower, "upper": self.upper,
        }


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    sensitivity: Proportion
    specificity: Proportion

    def as_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "sensitivity": self.sensitivity.as_dict(),
            "specificity": self.specificity.as_dict(),
        }


@dataclass(frozen=True)
class CalibrationImpact:
    source: str  # which calibration set, for people
    calibration_set_id: int
    model_name: str
    # its checkpoints scored the newest recent study too; None: no recent study to compare
    same_model: bool | None
    current: OperatingPoint
    proposed: OperatingPoint
    interval_method: str = INTERVAL_METHOD

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "calibration_set_id": self.calibration_set_id,
            "model_name": self.model_name,
            "same_model": self.same_model,
            "interval_method": self.interval_method,
            "current": self.current.as_dict(),
            "proposed": self.proposed.as_dict(),
        }


@dataclass(frozen=True)
class ImpactPreview:
    finding: str
    active_version: int
    current_threshold: float
    proposed_threshold: float
    studies_considered: int  # analysed studies among the last N that scored the finding
    studies_requested: int  # N
    to_present: int  # absent at the current threshold, present at the proposed one
    to_absent: int
    present_now: int
    present_proposed: int
    changed_studies: tuple[str, ...]  # Study Instance UIDs whose decision would change
    calibration: CalibrationImpact | None
    calibration_missing: str | None  # why there is no calibration part

    @property
    def changed(self) -> int:
        return self.to_present + self.to_absent

    def sentence(self) -> str:
        """"of the last N studies, K would change for F (X -> present, Y -> absent)"."""
        return (
            f"of the last {self.studies_considered} studies, {self.changed} would change for "
            f"{self.finding} ({self.to_present} -> present, {self.to_absent} -> absent)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "finding": self.finding,
            "active_version": self.active_version,
            "current_threshold": self.current_threshold,
            "proposed_threshold": self.proposed_threshold,
            "studies_requested": self.studies_requested,
            "studies_considered": self.studies_considered,
            "changed": self.changed,
            "to_present": self.to_present,
            "to_absent": self.to_absent,
            "present_now": self.present_now,
            "present_proposed": self.present_proposed,
            "changed_studies": list(self.changed_studies),
            "summary": self.sentence(),
            "calibration": self.calibration.as_dict() if self.calibration else None,
            "calibration_missing": self.calibration_missing,
        }


def defaults(catalogue: Catalogue) -> dict[str, float]:
    return {f.label: f.default_threshold for f in catalogue.findings}


def history(database: Database, catalogue: Catalogue) -> History:
    """Every version (who, when, why, method, provenance) and every creation and activation
    event, oldest first. Version 1 (the catalogue defaults) is made if there is none yet."""
    with database.sessions.begin() as session:
        profiles.ensure_initial_profile(session, defaults(catalogue))
        return History(
            profiles.active_version(session) or 1,
            tuple(profiles.list_profiles(session)),
            tuple(profiles.history(session)),
        )


def diff(database: Database, catalogue: Catalogue, a: int, b: int) -> VersionDiff:
    """Findings whose threshold differs between versions `a` and `b` (any two, either
    order). Raises ProfileError naming the known versions for an unknown one."""
    with database.sessions.begin() as session:
        profiles.ensure_initial_profile(session, defaults(catalogue))
        older, newer = profiles.get_profile(session, a), profiles.get_profile(session, b)
    return VersionDiff(older, newer, tuple(profiles.diff(older, newer)))


def finding_label(catalogue: Catalogue, name: str) -> str:
    """The catalogue's spelling of `name` (case-insensitive). Raises ProfileError listing the
    catalogue's labels for an unknown one."""
    for finding in catalogue.findings:
        if finding.label.casefold() == name.strip().casefold():
            return finding.label
    known = ", ".join(f.label for f in catalogue.findings)
    raise ProfileError(f"unknown finding {name!r} (the catalogue has: {known})")


def check_threshold(label: str, value: float) -> float:
    """`value` if a zero-shot probability can cross it, else ProfileError saying why."""
    if not MIN_PROBABILITY < value < MAX_PROBABILITY:
        raise ProfileError(
            f"threshold {value} for {label} can never be crossed: zero-shot probabilities are "
            f"sigmoid(cos(image, positive) - cos(image, negative)) of two cosines in [-1, 1], "
            f"so they always lie in [{MIN_PROBABILITY:.3f}, {MAX_PROBABILITY:.3f}]"
        )
    return float(value)


def preview(
    database: Database,
    catalogue: Catalogue,
    finding: str,
    proposed: float,
    *,
    last: int = DEFAULT_RECENT_STUDIES,
) -> ImpactPreview:
    """What changing `finding`'s threshold (in the active version) to `proposed` would do,
    from stored scores only (module docstring); says whether the calibration set was scored
    by the checkpoints that scored the newest study. Raises ProfileError for an unknown
    finding, an unreachable threshold or `last` < 1."""
    label = finding_label(catalogue, finding)
    check_threshold(label, proposed)
    if last < 1:
        raise ProfileError(f"the number of recent studies must be at least 1, got {last}")
    with database.sessions.begin() as session:
        active = profiles.active_profile(session, defaults(catalogue))
        recent = results.recent_study_scores(session, last)
        calibration = calibration_sets.latest_calibration_set(session)
    current = active.threshold_for(label, catalogue.by_label(label).default_threshold)
    scored = [(s.study_instance_uid, s.probabilities[label]) for s in recent
              if label in s.probabilities]
    now = {uid: p >= current for uid, p in scored}
    then = {uid: p >= proposed for uid, p in scored}
    changed = tuple(uid for uid, _ in scored if now[uid] != then[uid])
    model = recent[0].checkpoint_sha256s if recent else None
    impact, missing = _calibration_impact(calibration, label, current, proposed, model)
    return ImpactPreview(
        finding=label, active_version=active.version, current_threshold=current,
        proposed_threshold=float(proposed), studies_considered=len(scored),
        studies_requested=last,
        to_present=sum(1 for uid in changed if then[uid]),
        to_absent=sum(1 for uid in changed if not then[uid]),
        present_now=sum(now.values()), present_proposed=sum(then.values()),
        changed_studies=changed, calibration=impact, calibration_missing=missing,
    )


def operating_point(
    labels: Sequence[int], scores: Sequence[float], threshold: float
) -> OperatingPoint:
    """Sensitivity and specificity at `threshold` (positive when score >= threshold) with
    Wilson score 95% intervals."""
    pairs = list(zip(labels, scores, strict=True))
    tp = sum(1 for y, s in pairs if y == 1 and s >= threshold)
    positives = sum(1 for y, _ in pairs if y == 1)
    tn = sum(1 for y, s in pairs if y == 0 and s < threshold)
    negatives = sum(1 for y, _ in pairs if y == 0)
    return OperatingPoint(threshold, Proportion.of(tp, positives), Proportion.of(tn, negatives))


def _calibration_impact(
    calibration: calibration_sets.CalibrationSetView | None,
    label: str,
    current: float,
    proposed: float,
    checkpoint_sha256s: Sequence[str] | None,
) -> tuple[CalibrationImpact | None, str | None]:
    if calibration is None:
        return None, "no calibration set stored: run `dicom-node thresholds calibrate` once"
    data = calibration.findings.get(label)
    if data is None or not data.labels:
        return None, f"{calibration.describe()} has no labels for {label}"
    same = (None if checkpoint_sha256s is None
            else tuple(checkpoint_sha256s) == calibration.checkpoint_sha256s)
    return CalibrationImpact(
        source=calibration.describe(), calibration_set_id=calibration.id,
        model_name=calibration.model_name, same_model=same,
        current=operating_point(data.labels, data.scores, current),
        proposed=operating_point(data.labels, data.scores, proposed),
    ), None


def save_threshold(
    database: Database,
    catalogue: Catalogue,
    finding: str,
    value: float,
    *,
    actor: Actor,
    note: str,
    provenance: Mapping[str, Any] | None = None,
) -> tuple[ProfileVersion, tuple[ThresholdChange, ...]]:
    """A new version: the active one with `finding` at `value`, authored by `actor`; NOT
    activated (`activate` is the separate step). The note is required. Audited
    ("thresholds.create") in the same transaction. Returns the version and what changed
    against the active one. Raises ProfileError naming the problem."""
    label = finding_label(catalogue, finding)
    check_threshold(label, value)
    if not note or not note.strip():
        raise ProfileError("saving a threshold needs a note: why this value")
    with database.sessions.begin() as session:
        active = profiles.active_profile(session, defaults(catalogue))
        before = profiles.get_profile(session, active.version)
        if before.thresholds.get(label) == value:
            raise ProfileError(
                f"{label} is already {value} in the active version v{before.version}"
            )
        created = profiles.derive_profile(
            session, {label: float(value)}, author=actor.name, method="set",
            note=note.strip(), provenance=provenance,
        )
        record(session, actor, "thresholds.create", f"v{created.version}",
               before={"thresholds": {label: before.thresholds.get(label)}},
               after={"thresholds": {label: float(value)}, "note": note.strip()},
               now=datetime.now(UTC))
    return created, tuple(profiles.diff(before, created))


def activate(
    database: Database, catalogue: Catalogue, version: int, *, actor: Actor,
    note: str | None = None,
) -> tuple[int, bool]:
    """Make `version` active (a running node uses it from its next study on); audited
    ("thresholds.activate") when something changed. Returns (previously active version,
    whether anything changed). Raises ProfileError for an unknown version."""
    with database.sessions.begin() as session:
        profiles.ensure_initial_profile(session, defaults(catalogue))
        before = profiles.active_version(session) or 1
        changed = profiles.activate(session, version, by=actor.name, note=note)
        if changed:
            record(session, actor, "thresholds.activate", f"v{version}",
                   before={"active_version": before},
                   after={"active_version": version, "note": note}, now=datetime.now(UTC))
    return before, changed


def record_calibration_set(
    database: Database,
    *,
    author: str,
    labels_name: str,
    labels_sha256: str,
    label_policy: str,
    model_name: str,
    checkpoint_sha256s: Sequence[str],
    catalogue_version: str,
    profile_version: int | None,
    findings: Mapping[str, tuple[Sequence[int], Sequence[float]]],
) -> int:
    """Store what a calibration measured: per finding, the labels (1/0) and scores of the
    labelled, scored images. The newest set is what `preview` and drift compare with.
    Returns its id."""
    with database.sessions.begin() as session:
        return calibration_sets.add_calibration_set(
            session, created_at=datetime.now(UTC), author=author, labels_name=labels_name,
            labels_sha256=labels_sha256, label_policy=label_policy, model_name=model_name,
            checkpoint_sha256s=checkpoint_sha256s, catalogue_version=catalogue_version,
            profile_version=profile_version,
            findings={
                f: calibration_sets.LabelledScores(tuple(y), tuple(s))
                for f, (y, s) in findings.items()
            },
        )
