"""Choose an operating threshold per finding from labelled scores, by a named method.

Methods (`parse_method` reads the CLI spelling):
- `mcc`: maximise the Matthews correlation coefficient (what CheXzero used to compare with
  radiologists, `get_best_p_vals`);
- `youden`: maximise Youden's J = sensitivity + specificity - 1;
- `sensitivity:T`: the highest threshold whose sensitivity is still >= T (so, among the
  thresholds that reach the target, the one with the best specificity);
- `specificity:T`: the lowest threshold whose specificity is >= T (best sensitivity there);
- `fixed`: keep the threshold given (the active profile's), only measure it.

Candidates are the distinct observed scores (an image is positive when score >= threshold),
plus one value just above the highest score (call nothing positive), so every target is
reachable whenever the finding has both classes. Ties in the maximised metric (within 1e-12)
go to the lowest threshold, i.e. the more sensitive operating point; on the ascending candidate
list this is exactly CheXzero's `np.argmax`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.metrics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    METRIC_NAMES,
    Confusion,
    Interval,
    confusion_at,
    interval,
    resample_counts,
)

TIE_TOLERANCE = 1e-12
METHOD_KINDS = ("mcc", "youden", "sensitivity", "specificity", "fixed")


@dataclass(frozen=True)
class ThresholdMethod:
    kind: str
    target: float | None = None

    def describe(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"


def parse_method(text: str) -> ThresholdMethod:
    """`mcc`, `youden`, `fixed`, `sensitivity:0.9` or `specificity:0.9`."""
    kind, _, target_text = text.strip().lower().partition(":")
    if kind not in METHOD_KINDS:
        raise ValueError(
            f"unknown threshold method {text!r}: use mcc, youden, sensitivity:T, specificity:T or fixed"
        )
    if kind in ("sensitivity", "specificity"):
        try:
            target = float(target_text)
        except ValueError:
            raise ValueError(f"method {kind} needs a target, e.g. {kind}:0.9") from None
        if not 0 < target <= 1:
            raise ValueError(f"target {kind} must lie in (0, 1], got {target_text}")
        return ThresholdMethod(kind, target)
    if target_text:
        raise ValueError(f"method {kind} takes no target (got {text!r})")
    return ThresholdMethod(kind)


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Distinct observed scores ascending, then one just above the highest."""
    distinct = np.unique(np.asarray(scores, dtype=np.float64))
    if distinct.size == 0:
        raise ValueError("no scores to choose a threshold from")
    return np.r_[distinct, np.nextafter(distinct[-1], np.inf)]


def confusion_per_candidate(
    labels: np.ndarray, scores: np.ndarray, candidates: np.ndarray
) -> Confusion:
    """Confusion counts at each candidate threshold, vectorised."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    tp = pos.size - np.searchsorted(pos, candidates, side="left")
    fp = neg.size - np.searchsorted(neg, candidates, side="left")
    return Confusion(tp=tp, fp=fp, tn=neg.size - fp, fn=pos.size - tp)


def choose_threshold(
    labels: np.ndarray, scores: np.ndarray, method: ThresholdMethod, fixed: float | None = None
) -> float:
    """The threshold `method` picks on these labels (0/1) and scores."""
    if method.kind == "fixed":
        if fixed is None:
            raise ValueError("method fixed needs the threshold to keep")
        return float(fixed)
    y = np.asarray(labels)
    if not (y == 1).any() or not (y == 0).any():
        raise ValueError("choosing a threshold needs both positive and negative labels")
    candidates = candidate_thresholds(scores)
    metrics = confusion_per_candidate(y, scores, candidates).metrics()
    if method.kind in ("mcc", "youden"):
        value = (
            metrics["mcc"]
            if method.kind == "mcc"
            else (metrics["sensitivity"] + metrics["specificity"] - 1)
        )
        best = np.flatnonzero(value >= value.max() - TIE_TOLERANCE)
        return float(candidates[best[0]])
    reached = np.flatnonzero(metrics[method.kind] >= method.target - TIE_TOLERANCE)
    # sensitivity falls as the threshold rises, specificity grows: take the far end that still
    # reaches the target so the other metric is as good as it can be.
    index = reached[-1] if method.kind == "sensitivity" else reached[0]
    return float(candidates[index])


def out_of_bag_operating(
    labels: np.ndarray,
    scores: np.ndarray,
    method: ThresholdMethod,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Interval]:
    """Intervals for the metrics a calibrated threshold will show on new studies.

    A threshold chosen on a set looks better on that set than on the next one (the MCC optimum
    sits at the edge of the positives it saw). So each bootstrap resample re-runs the choice on
    the images it drew and measures the metrics on the images it did not draw (out of bag,
    about 37% of them); the interval is the percentile interval of those out-of-bag values. The
    estimate stays the metric at the threshold chosen on all images."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    chosen = choose_threshold(y, s, method)
    estimates = confusion_at(y, s, chosen).metrics()
    values: dict[str, list[float]] = {name: [] for name in METRIC_NAMES}
    for block in resample_counts(len(y), resamples, seed):
        for counts in block:
            drawn = counts.astype(np.int64)
            in_y, in_s = np.repeat(y, drawn), np.repeat(s, drawn)
            out = drawn == 0
            if not (in_y.any() and (~in_y).any()) or not out.any():
                continue  # no threshold can be chosen, or nothing left to measure on
            at = confusion_at(y[out], s[out], choose_threshold(in_y, in_s, method)).metrics()
            for name in METRIC_NAMES:
                values[name].append(float(at[name]))
    return {
        name: interval(float(estimates[name]), np.asarray(values[name]), confidence)
        for name in METRIC_NAMES
    }
