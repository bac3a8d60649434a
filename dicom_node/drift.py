"""Score drift: per finding, the distribution of recent studies' stored probabilities against
the stored calibration set's, as histogram data for a chart (`dicom_node.charts`) and two
numbers a person can compare: the difference of means and the two-sample Kolmogorov-Smirnov
statistic D (the largest gap between the two empirical distribution functions, 0..1).

Recent studies are study-level probabilities (the image -> study aggregation of each
result); the calibration set is per image, as `thresholds calibrate` scored it. Only stored
scores are read. No SQL here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.catalogue import MAX_PROBABILITY, MIN_PROBABILITY, Catalogue
from storage import calibration_sets, profiles, results
from storage.db import Database

DEFAULT_BINS = 20


@dataclass(frozen=True)
class FindingDrift:
    finding: str
    threshold: float  # the active version's
    edges: tuple[float, ...]  # bins + 1 edges over the reachable range [0.119, 0.881]
    recent: tuple[int, ...]  # studies per bin
    calibration_positive: tuple[int, ...]  # labelled-positive calibration images per bin
    calibration_negative: tuple[int, ...]
    recent_mean: float | None
    calibration_mean: float | None
    ks_statistic: float | None  # None unless both sides have scores

    @property
    def n_recent(self) -> int:
        return sum(self.recent)

    @property
    def n_calibration(self) -> int:
        return sum(self.calibration_positive) + sum(self.calibration_negative)

    def as_dict(self) -> dict[str, Any]:
        return {
            "finding": self.finding, "threshold": self.threshold, "edges": list(self.edges),
            "recent": list(self.recent),
            "calibration_positive": list(self.calibration_positive),
            "calibration_negative": list(self.calibration_negative),
            "n_recent": self.n_recent, "n_calibration": self.n_calibration,
            "recent_mean": self.recent_mean, "calibration_mean": self.calibration_mean,
            "ks_statistic": self.ks_statistic,
        }


@dataclass(frozen=True)
class DriftReport:
    studies: int  # recent analysed studies read
    calibration: str | None  # which calibration set, None when none is stored
    findings: tuple[FindingDrift, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "studies": self.studies, "calibration": self.calibration,
            "findings": [f.as_dict() for f in self.findings],
        }


def drift(
    database: Database, catalogue: Catalogue, *, last: int = 200, bins: int = DEFAULT_BINS,
    findings: Sequence[str] | None = None, also_show: Sequence[float] = (),
) -> DriftReport:
    """Histograms of the last `last` analysed studies and of the newest calibration set for
    each enabled finding (or those named), over the range the scores, the threshold and
    `also_show` (e.g. a proposed threshold) span (`score_edges`). Raises ValueError for
    `last` or `bins` < 1."""
    if last < 1 or bins < 1:
        raise ValueError("the number of studies and of bins must be at least 1")
    defaults = {f.label: f.default_threshold for f in catalogue.findings}
    with database.sessions.begin() as session:
        active = profiles.active_profile(session, defaults)
        recent = results.recent_study_scores(session, last)
        calibration = calibration_sets.latest_calibration_set(session)
    labels = list(findings) if findings else [f.label for f in catalogue.enabled()]
    out = []
    for label in labels:
        scores = np.array([s.probabilities[label] for s in recent if label in s.probabilities])
        cal = calibration.findings.get(label) if calibration else None
        y = np.array(cal.labels if cal else [], dtype=int)
        s = np.array(cal.scores if cal else [], dtype=float)
        threshold = active.threshold_for(label, defaults[label])
        edges = score_edges([*scores, *s, threshold, *also_show], bins)
        out.append(FindingDrift(
            finding=label, threshold=threshold,
            edges=tuple(float(e) for e in edges), recent=_counts(scores, edges),
            calibration_positive=_counts(s[y == 1], edges),
            calibration_negative=_counts(s[y == 0], edges),
            recent_mean=float(scores.mean()) if scores.size else None,
            calibration_mean=float(s.mean()) if s.size else None,
            ks_statistic=ks_statistic(scores, s) if scores.size and s.size else None,
        ))
    return DriftReport(len(recent), calibration.describe() if calibration else None, tuple(out))


def score_edges(values: Sequence[float], bins: int = DEFAULT_BINS) -> np.ndarray:
    """`bins` + 1 equal-width edges over the span of `values` widened by 10% on each side
    (at least 0.05 wide), inside the reachable range [0.119, 0.881]: a model whose scores
    all lie within a few hundredths still shows a shape instead of one full bin."""
    data = np.asarray(values, dtype=float)
    if not data.size:
        return np.linspace(MIN_PROBABILITY, MAX_PROBABILITY, bins + 1)
    low, high = float(data.min()), float(data.max())
    pad = max((high - low) * 0.1, (0.05 - (high - low)) / 2, 0.0)
    low, high = max(low - pad, MIN_PROBABILITY), min(high + pad, MAX_PROBABILITY)
    return np.linspace(low, high, bins + 1)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D = max |F_a(x) - F_b(x)| over all observed x."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


def _counts(values: np.ndarray, edges: np.ndarray) -> tuple[int, ...]:
    clipped = np.clip(values, edges[0], edges[-1])  # float noise at the reachable extremes
    return tuple(int(c) for c in np.histogram(clipped, bins=edges)[0])
