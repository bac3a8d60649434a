"""Evaluate scores against labels: AUROC per finding and its mean with bootstrap intervals, the
confusion metrics at each finding's threshold with bootstrap intervals, a ROC figure with the
operating points marked, and CSV/JSON files.

A finding whose labels hold a single class (or none) is reported as not evaluable with the
reason, never as an error. Images the engine declined (score NaN) and cells the label policy
excluded (label NaN) do not count for that finding. Bootstrap semantics: `ml.metrics`.
The mean AUROC is over the evaluable findings; its interval comes from the per-resample means.
"""

from __future__ import annotations

import csv
import json
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.metrics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    METRIC_NAMES,
    PROPORTIONS,
    Interval,
    auroc,
    confusion_at,
    interval,
    proportion_interval,
    resample_counts,
    roc_points,
)


@dataclass(frozen=True)
class FindingResult:
    finding: str
    n_positive: int
    n_negative: int
    n_excluded: int
    reason: str | None  # why not evaluable; None when evaluable
    auroc: Interval | None = None
    threshold: float | None = None
    operating: Mapping[str, Interval] | None = None  # METRIC_NAMES at `threshold`
    confusion: Mapping[str, int] | None = None  # tp, fp, tn, fn at `threshold`

    @property
    def evaluable(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "finding": self.finding,
            "evaluable": self.evaluable,
            "reason": self.reason,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "n_excluded": self.n_excluded,
            "auroc": self.auroc.as_dict() if self.auroc else None,
            "threshold": self.threshold,
            "operating_point": {k: v.as_dict() for k, v in self.operating.items()}
            if self.operating
            else None,
            "confusion": dict(self.confusion) if self.confusion else None,
        }


@dataclass(frozen=True)
class EvaluationReport:
    findings: tuple[FindingResult, ...]
    mean_auroc: Interval | None
    n_images: int
    n_scored: int
    resamples: int
    seed: int
    confidence: float
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]]  # finding -> (fpr, tpr)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "n_scored": self.n_scored,
            "bootstrap": {
                "resamples": self.resamples,
                "seed": self.seed,
                "confidence": self.confidence,
            },
            "mean_auroc": self.mean_auroc.as_dict() if self.mean_auroc else None,
            "mean_over": [f.finding for f in self.findings if f.evaluable],
            "findings": [f.as_dict() for f in self.findings],
        }


def evaluate_scores(
    findings: Sequence[str],
    labels: np.ndarray,
    scores: np.ndarray,
    thresholds: Mapping[str, float] | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> EvaluationReport:
    """`labels` and `scores` are (n_images, n_findings), NaN where an image does not count."""
    labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
    if labels.shape != scores.shape or labels.shape[1:] != (len(findings),):
        raise ValueError(
            f"labels {labels.shape} and scores {scores.shape} must be (images, {len(findings)})"
        )
    masks = ~np.isnan(labels) & ~np.isnan(scores)
    reasons = [_not_evaluable(labels[masks[:, j], j]) for j in range(len(findings))]
    evaluable = [j for j, r in enumerate(reasons) if r is None]
    thresholds = dict(thresholds or {})
    boot = _bootstrap(labels, scores, masks, evaluable, findings, thresholds, resamples, seed)
    results, curves, means = [], {}, []
    for j, finding in enumerate(findings):
        y, s = labels[masks[:, j], j], scores[masks[:, j], j]
        base = {
            "finding": finding,
            "n_positive": int((y == 1).sum()),
            "n_negative": int((y == 0).sum()),
            "n_excluded": int(labels.shape[0] - masks[:, j].sum()),
        }
        if reasons[j] is not None:
            results.append(FindingResult(**base, reason=reasons[j]))
            continue
        estimate = auroc(y, s)
        means.append(estimate)
        curves[finding] = roc_points(y, s)[:2]
        results.append(
            FindingResult(
                **base,
                reason=None,
                auroc=interval(estimate, boot["auroc"][finding], confidence),
                **_operating(y, s, thresholds.get(finding), boot.get(finding), confidence),
            )
        )
    mean = interval(float(np.mean(means)), boot["mean"], confidence) if means else None
    return EvaluationReport(
        tuple(results),
        mean,
        labels.shape[0],
        int((~np.isnan(scores)).any(axis=1).sum()),
        resamples,
        seed,
        confidence,
        curves,
    )


def _not_evaluable(y: np.ndarray) -> str | None:
    if y.size == 0:
        return "no labelled images"
    if (y == 1).all():
        return f"only positive labels ({y.size})"
    if (y == 0).all():
        return f"only negative labels ({y.size})"
    return None


def _bootstrap(
    labels: np.ndarray,
    scores: np.ndarray,
    masks: np.ndarray,
    evaluable: list[int],
    findings: Sequence[str],
    thresholds: Mapping[str, float],
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    """Per-resample AUROC (and metrics at the threshold) of every evaluable finding."""
    aurocs: dict[str, list[np.ndarray]] = {findings[j]: [] for j in evaluable}
    metrics: dict[str, dict[str, list[np.ndarray]]] = {}
    for counts in resample_counts(labels.shape[0], resamples, seed):
        for j in evaluable:
            finding, mask = findings[j], masks[:, j]
            y, s, w = labels[mask, j], scores[mask, j], counts[:, mask]
            aurocs[finding].append(auroc(y, s, weights=w))
            if finding in thresholds:
                at = confusion_at(y, s, thresholds[finding], weights=w).metrics()
                for name in METRIC_NAMES:
                    metrics.setdefault(finding, {}).setdefault(name, []).append(at[name])
    out: dict[str, Any] = {"auroc": {f: np.concatenate(v) for f, v in aurocs.items()}}
    for finding, by_name in metrics.items():
        out[finding] = {name: np.concatenate(v) for name, v in by_name.items()}
    stacked = np.vstack(list(out["auroc"].values())) if evaluable else np.empty((0, resamples))
    # a resample where any finding is undefined has no mean: NaN, dropped from the interval
    out["mean"] = stacked.mean(axis=0) if evaluable else np.full(resamples, np.nan)
    return out


def _operating(
    y: np.ndarray,
    s: np.ndarray,
    threshold: float | None,
    resampled: Mapping[str, np.ndarray] | None,
    confidence: float,
) -> dict[str, Any]:
    if threshold is None or resampled is None:
        return {}
    counts = confusion_at(y, s, threshold)
    estimates = counts.metrics()
    return {
        "threshold": float(threshold),
        "operating": {
            n: proportion_interval(n, counts, resampled[n], confidence)
            if n in PROPORTIONS
            else interval(float(estimates[n]), resampled[n], confidence)
            for n in METRIC_NAMES
        },
        "confusion": {k: int(getattr(counts, k)) for k in ("tp", "fp", "tn", "fn")},
    }


CSV_COLUMNS = (
    "finding",
    "evaluable",
    "reason",
    "n_positive",
    "n_negative",
    "n_excluded",
    "auroc",
    "auroc_lower",
    "auroc_upper",
    "threshold",
    *(f"{m}{suffix}" for m in METRIC_NAMES for suffix in ("", "_lower", "_upper")),
)


def write_metrics_csv(report: EvaluationReport, path: Path) -> None:
    """One row per finding, then a `mean` row (AUROC over the evaluable findings)."""
    with Path(path).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in report.findings:
            row: dict[str, Any] = {k: v for k, v in r.as_dict().items() if k in CSV_COLUMNS}
            row.update(_interval_cells("auroc", r.auroc))
            row["threshold"] = _fmt(r.threshold)
            for name, value in (r.operating or {}).items():
                row.update(_interval_cells(name, value))
            writer.writerow(row)
        if report.mean_auroc:
            writer.writerow(
                {
                    "finding": "mean",
                    "evaluable": True,
                    **_interval_cells("auroc", report.mean_auroc),
                }
            )


def _interval_cells(name: str, value: Interval | None) -> dict[str, str]:
    if value is None:
        return {}
    return {
        name: _fmt(value.estimate),
        f"{name}_lower": _fmt(value.lower),
        f"{name}_upper": _fmt(value.upper),
    }


def _fmt(value: float | None) -> str:
    return "" if value is None or np.isnan(value) else f"{value:.6g}"


def write_metrics_json(
    report: EvaluationReport, path: Path, extra: Mapping[str, Any] | None = None
) -> None:
    payload = {**(extra or {}), **report.as_dict()}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


PLOT_INCHES = 7.0  # the square ROC panel; the legend and notes go below it
LEGEND_ROW_INCHES = 0.19
NOTE_LINE_INCHES = 0.15


def plot_roc(
    report: EvaluationReport, path: Path, title: str = "ROC curves", footnote: str | None = None
) -> None:
    """One ROC curve per evaluable finding, its operating point (threshold) marked, the AUROC
    and its interval in the legend below the axes, then the not-evaluable findings and notes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    notes = _figure_notes(report, footnote)
    rows = sum(r.evaluable for r in report.findings) + 3  # chance, mean, operating point
    below = 0.5 + LEGEND_ROW_INCHES * rows + NOTE_LINE_INCHES * len(notes)
    height = PLOT_INCHES + below
    figure = Figure(figsize=(PLOT_INCHES, height), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_axes((0.13, (below + 0.55) / height, 0.8, (PLOT_INCHES - 1.0) / height))
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    _draw_curves(axes, report)
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title=title,
        aspect="equal",
    )
    axes.grid(alpha=0.3)
    figure.legend(
        *axes.get_legend_handles_labels(),
        loc="upper left",
        fontsize=8,
        bbox_to_anchor=(0.02, below / height),
        frameon=False,
    )
    figure.text(
        0.02, 0.1 / height, "\n".join(notes), fontsize=7, va="bottom", ha="left", color="0.25"
    )
    figure.savefig(path, format="png")


def _figure_notes(report: EvaluationReport, footnote: str | None) -> list[str]:
    unevaluable = [f"{r.finding} ({r.reason})" for r in report.findings if not r.evaluable]
    notes = textwrap.wrap("not evaluable: " + ", ".join(unevaluable), 120) if unevaluable else []
    notes.append(
        f"{report.confidence:.0%} bootstrap intervals, {report.resamples} resamples, seed {report.seed}"
    )
    return notes + textwrap.wrap(footnote, 120) if footnote else notes


def _draw_curves(axes: Any, report: EvaluationReport) -> None:
    evaluable = [r for r in report.findings if r.evaluable]
    marker = {"marker": "o", "markeredgecolor": "black", "linestyle": "none"}
    for colour, result in zip(_palette(len(evaluable)), evaluable, strict=True):
        fpr, tpr = report.curves[result.finding]
        a = result.auroc
        label = f"{result.finding}  AUROC {a.estimate:.3f} [{a.lower:.3f}, {a.upper:.3f}]"
        if result.operating:
            label += f", threshold {result.threshold:.3f}"
        axes.plot(fpr, tpr, color=colour, linewidth=1.6, label=label)
        if result.operating:
            sens = result.operating["sensitivity"].estimate
            spec = result.operating["specificity"].estimate
            axes.plot([1 - spec], [sens], markersize=8, color=colour, clip_on=False, **marker)
    if report.mean_auroc:
        m = report.mean_auroc
        axes.plot([], [], " ", label=f"mean AUROC {m.estimate:.3f} [{m.lower:.3f}, {m.upper:.3f}]")
    if any(r.operating for r in evaluable):
        axes.plot([], [], color="white", label="operating point (threshold)", **marker)


def _palette(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    # tab20 pairs a dark and a light shade of each hue: all dark shades first, then the light
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return [colormaps["tab20"](order[i % 20]) for i in range(n)]
