"""The prompt workbench service (CheXzero's idea: a new finding needs only a prompt pair, no
training): score a label's positive/negative prompt pair on recent studies from the image
embeddings the worker stored with each result, and measure it against a labelled set.

Cost: one text encoding per checkpoint; no image is read or encoded again. The probability of
an image is exactly the engine's: `ml.engine.zero_shot_probabilities` on the stored float32
embedding and the prompt pair's embeddings, averaged over the result's ensemble members (a
checkpoint listed twice counts twice), then the result's own image -> study aggregation
(`dicom_node.worker.aggregate`). Studies scored by other checkpoints, or before embeddings
were kept (migration 0013), are counted and left out.

Labelled set: a CSV with a `study_instance_uid` column and a `label` column (1 present,
0 absent, blank = not labelled), for studies the node has analysed. AUROC with a percentile
bootstrap interval exactly as `dicom-node evaluate` computes it (`ml.evaluation`, CheXzero's
resampling). No SQL here.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.settings import Settings
from ml.catalogue import MAX_PROBABILITY, MIN_PROBABILITY
from ml.defaults import DEFAULT_RESAMPLES
from storage import results
from storage.db import Database
from storage.results import StudyEmbeddings

DEFAULT_RECENT_STUDIES = 200
HISTOGRAM_BINS = 20
BOOTSTRAP_METHOD = "percentile bootstrap 95% (CheXzero resampling)"
UID_COLUMN, LABEL_COLUMN = "study_instance_uid", "label"
OTHER_MODEL = "scored by other checkpoints"
NO_EMBEDDINGS = "scored before embeddings were kept"


@dataclass(frozen=True)
class PromptPair:
    label: str
    positive: str
    negative: str

    def __post_init__(self) -> None:
        for name in ("label", "positive", "negative"):
            if not getattr(self, name).strip():
                raise ValueError(f"the {name} {'prompt ' if name != 'label' else ''}is empty")
        if self.positive.strip().casefold() == self.negative.strip().casefold():
            raise ValueError("the positive and negative prompts are the same text")


@dataclass(frozen=True)
class LabelledAuroc:
    source: str  # the CSV's file name
    sha256: str
    n_positive: int
    n_negative: int
    not_found: int  # labelled studies without usable embeddings
    reason: str | None  # why no AUROC (one class only, ...); None when there is one
    estimate: float | None
    lower: float | None
    upper: float | None
    resamples: int
    seed: int
    method: str = BOOTSTRAP_METHOD

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "sha256": self.sha256, "n_positive": self.n_positive,
            "n_negative": self.n_negative, "not_found": self.not_found, "reason": self.reason,
            "auroc": self.estimate, "lower": self.lower, "upper": self.upper,
            "resamples": self.resamples, "seed": self.seed, "method": self.method,
        }


@dataclass(frozen=True)
class PromptTrial:
    pair: PromptPair
    model_name: str
    checkpoint_sha256s: tuple[str, ...]
    studies_requested: int
    scores: tuple[tuple[str, float], ...]  # (Study Instance UID, study-level score), newest first
    left_out: Mapping[str, int]  # reason -> studies
    edges: tuple[float, ...]
    counts: tuple[int, ...]
    threshold: float  # the default threshold the summary counts against
    labelled: LabelledAuroc | None
    clinical_use: bool  # the model's card allows clinical use (the demo model's does not)

    @property
    def at_or_above(self) -> int:
        return sum(1 for _, s in self.scores if s >= self.threshold)

    def summary(self) -> dict[str, float | None]:
        values = np.array([s for _, s in self.scores])
        if not values.size:
            return {"mean": None, "median": None, "min": None, "max": None}
        return {"mean": float(values.mean()), "median": float(np.median(values)),
                "min": float(values.min()), "max": float(values.max())}

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.pair.label, "positive_prompt": self.pair.positive,
            "negative_prompt": self.pair.negative, "model_name": self.model_name,
            "checkpoint_sha256s": list(self.checkpoint_sha256s),
            "studies_requested": self.studies_requested, "studies_scored": len(self.scores),
            "left_out": dict(self.left_out), "threshold": self.threshold,
            "at_or_above_threshold": self.at_or_above, "summary": self.summary(),
            "histogram": {"edges": list(self.edges), "counts": list(self.counts)},
            "scores": [{"study_instance_uid": u, "score": s} for u, s in self.scores],
            "labelled": self.labelled.as_dict() if self.labelled else None,
            "clinical_use": self.clinical_use,
        }


def prompt_embeddings(settings: Settings, pair: PromptPair) -> dict[str, Any]:
    """{checkpoint SHA-256: (2, D) float32 tensor (positive, negative)} for the configured
    checkpoints: the one text encoding a trial costs. Raises ValueError when no checkpoint is
    configured, ml.checkpoint's errors for a missing or unreadable one."""
    from ml.engine import encode_prompts

    if not settings.model.checkpoints:
        raise ValueError("model.checkpoints is empty: configure at least one checkpoint")
    paths = [settings.resolve(p) for p in settings.model.checkpoints]
    return encode_prompts(paths, [pair.positive, pair.negative], device="cpu")


def study_score(study: StudyEmbeddings, text: Mapping[str, Any]) -> float | str:
    """The study-level score of the prompt pair in `text` (see prompt_embeddings), or the
    reason the study cannot be scored from its stored embeddings."""
    import torch

    from dicom_node.worker import aggregate
    from ml.engine import zero_shot_probabilities

    members = study.checkpoint_sha256s
    if not members or any(sha not in text for sha in members):
        return OTHER_MODEL
    if not study.images or any(sha not in image for image in study.images for sha in members):
        return NO_EMBEDDINGS
    total = torch.zeros(len(study.images), 1, dtype=torch.float64)
    for sha in members:
        features = torch.from_numpy(
            np.stack([np.frombuffer(image[sha], dtype="<f4") for image in study.images])
        )
        pair = text[sha]
        total += zero_shot_probabilities(features, pair[0:1], pair[1:2])
    per_image = (total / len(members)).numpy()
    return float(aggregate(per_image, study.aggregation)[0])


def try_prompt(
    database: Database,
    settings: Settings,
    pair: PromptPair,
    *,
    last: int = DEFAULT_RECENT_STUDIES,
    labels_csv: Path | None = None,
    threshold: float = 0.5,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> PromptTrial:
    """Score `pair` on the last `last` analysed studies (and on the studies of `labels_csv`,
    with AUROC). Raises ValueError for `last` < 1, an unreadable labels file (naming the
    line) or an unreachable threshold."""
    if last < 1:
        raise ValueError(f"the number of recent studies must be at least 1, got {last}")
    if not MIN_PROBABILITY < threshold < MAX_PROBABILITY:
        raise ValueError(f"threshold {threshold} lies outside the reachable scores "
                         f"[{MIN_PROBABILITY:.3f}, {MAX_PROBABILITY:.3f}]")
    study_labels = read_study_labels(labels_csv) if labels_csv is not None else None
    text = prompt_embeddings(settings, pair)
    with database.read_only() as session:
        recent = results.study_embeddings(session, limit=last)
        labelled = (results.study_embeddings(session, study_uids=list(study_labels))
                    if study_labels else [])
    scores, left_out = _score_all(recent, text)
    from dicom_node.drift import score_edges

    edges = score_edges([*(s for _, s in scores), threshold], HISTOGRAM_BINS)
    values = np.clip([s for _, s in scores], edges[0], edges[-1])
    counts = np.histogram(values, bins=edges)[0] if scores else np.zeros(HISTOGRAM_BINS, int)
    auroc = None
    if study_labels is not None and labels_csv is not None:
        auroc = _labelled_auroc(labels_csv, study_labels, labelled, text, resamples, seed)
    return PromptTrial(
        pair=pair, model_name=settings.model.name, checkpoint_sha256s=tuple(text),
        studies_requested=last, scores=tuple(scores), left_out=dict(left_out),
        edges=tuple(float(e) for e in edges), counts=tuple(int(c) for c in counts),
        threshold=threshold, labelled=auroc, clinical_use=settings.model.clinical_use,
    )


def _score_all(
    studies: Sequence[StudyEmbeddings], text: Mapping[str, Any]
) -> tuple[list[tuple[str, float]], Counter[str]]:
    scores, left_out = [], Counter[str]()
    for study in studies:
        score = study_score(study, text)
        if isinstance(score, str):
            left_out[score] += 1
        else:
            scores.append((study.study_instance_uid, score))
    return scores, left_out


def _labelled_auroc(
    path: Path,
    study_labels: Mapping[str, int],
    studies: Sequence[StudyEmbeddings],
    text: Mapping[str, Any],
    resamples: int,
    seed: int,
) -> LabelledAuroc:
    from ml.evaluation import evaluate_scores

    scored = dict(_score_all(studies, text)[0])
    uids = [uid for uid in study_labels if uid in scored]
    y = np.array([[study_labels[u]] for u in uids], dtype=np.float64).reshape(-1, 1)
    s = np.array([[scored[u]] for u in uids], dtype=np.float64).reshape(-1, 1)
    base = {
        "source": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "n_positive": int((y == 1).sum()), "n_negative": int((y == 0).sum()),
        "not_found": len(study_labels) - len(uids), "resamples": resamples, "seed": seed,
    }
    if not uids:
        return LabelledAuroc(**base, reason="none of the labelled studies has stored "
                             "embeddings from these checkpoints", estimate=None, lower=None,
                             upper=None)
    (result,) = evaluate_scores(["trial"], y, s, resamples=resamples, seed=seed).findings
    if result.auroc is None:
        return LabelledAuroc(**base, reason=result.reason, estimate=None, lower=None, upper=None)
    a = result.auroc
    return LabelledAuroc(**base, reason=None, estimate=a.estimate, lower=a.lower, upper=a.upper)


def read_study_labels(path: Path) -> dict[str, int]:
    """{Study Instance UID: 1 | 0} from a CSV with `study_instance_uid` and `label` columns
    (header names case-insensitive; label 1/0, also 1.0/0.0; blank = not labelled). Raises
    ValueError naming the file and line for anything else, FileNotFoundError when missing."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = {(c or "").strip().casefold(): c for c in reader.fieldnames or []}
        if UID_COLUMN not in columns or LABEL_COLUMN not in columns:
            raise ValueError(f"{path.name}: needs the columns {UID_COLUMN} and {LABEL_COLUMN}, "
                             f"found {', '.join(reader.fieldnames or []) or 'none'}")
        out: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            uid = (row[columns[UID_COLUMN]] or "").strip()
            cell = (row[columns[LABEL_COLUMN]] or "").strip()
            if not uid or not cell:
                continue
            if cell not in ("1", "1.0", "0", "0.0"):
                raise ValueError(f"{path.name} line {line}: label must be 1 or 0, got {cell!r}")
            value = 1 if cell.startswith("1") else 0
            if out.setdefault(uid, value) != value:
                raise ValueError(f"{path.name} line {line}: study {uid} is labelled both 1 and 0")
    return out
