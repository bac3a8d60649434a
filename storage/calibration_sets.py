"""Calibration sets: the labelled scores a `thresholds calibrate` run measured, per finding.

Kept so that the impact of a proposed threshold (its sensitivity and specificity) and the
drift of recent scores can be shown without the labels file or the images. Functions take the
caller's Session and never commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import CalibrationScore, CalibrationSet


@dataclass(frozen=True)
class LabelledScores:
    labels: tuple[int, ...]  # 1 positive, 0 negative
    scores: tuple[float, ...]  # probability of each image, same order


@dataclass(frozen=True)
class CalibrationSetView:
    id: int
    created_at: datetime
    author: str
    labels_name: str
    labels_sha256: str
    label_policy: str
    model_name: str
    checkpoint_sha256s: tuple[str, ...]
    catalogue_version: str
    profile_version: int | None
    findings: Mapping[str, LabelledScores]

    def describe(self) -> str:
        return (
            f"calibration set #{self.id}: {self.labels_name} (sha256 {self.labels_sha256[:12]}), "
            f"{self.created_at:%Y-%m-%d %H:%M} UTC"
        )


def add_calibration_set(
    session: Session,
    *,
    created_at: datetime,
    author: str,
    labels_name: str,
    labels_sha256: str,
    label_policy: str,
    model_name: str,
    checkpoint_sha256s: Sequence[str],
    catalogue_version: str,
    profile_version: int | None,
    findings: Mapping[str, LabelledScores],
) -> int:
    """Store a calibration set; returns its id. ValueError when labels and scores differ in
    length for a finding."""
    for finding, data in findings.items():
        if len(data.labels) != len(data.scores):
            raise ValueError(f"{finding}: {len(data.labels)} labels but {len(data.scores)} scores")
    row = CalibrationSet(
        created_at=created_at, author=author, labels_name=labels_name,
        labels_sha256=labels_sha256, label_policy=label_policy, model_name=model_name,
        checkpoint_sha256s_json=json.dumps(list(checkpoint_sha256s)),
        catalogue_version=catalogue_version, profile_version=profile_version,
    )
    session.add(row)
    session.flush()
    session.add_all(
        CalibrationScore(
            calibration_set_id=row.id, finding=finding,
            labels_json=json.dumps([int(v) for v in data.labels]),
            scores_json=json.dumps([float(v) for v in data.scores]),
        )
        for finding, data in sorted(findings.items())
    )
    session.flush()
    return row.id


def latest_calibration_set(session: Session) -> CalibrationSetView | None:
    """The newest calibration set, or None when no calibration has been stored."""
    newest = select(CalibrationSet).order_by(CalibrationSet.id.desc()).limit(1)
    row = session.scalars(newest).first()
    if row is None:
        return None
    scores = session.scalars(
        select(CalibrationScore).where(CalibrationScore.calibration_set_id == row.id)
    )
    return CalibrationSetView(
        id=row.id, created_at=row.created_at, author=row.author, labels_name=row.labels_name,
        labels_sha256=row.labels_sha256, label_policy=row.label_policy,
        model_name=row.model_name,
        checkpoint_sha256s=tuple(json.loads(row.checkpoint_sha256s_json)),
        catalogue_version=row.catalogue_version, profile_version=row.profile_version,
        findings={
            s.finding: LabelledScores(
                tuple(json.loads(s.labels_json)), tuple(json.loads(s.scores_json))
            )
            for s in scores
        },
    )
