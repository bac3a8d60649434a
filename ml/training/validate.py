"""Validation during training: contrastive loss on held-out pairs and zero-shot prompt-pair AUROC
(CheXzero scoring: softmax over the positive and negative prompt's cosine similarity, no
logit_scale) for every finding that has labels."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ml.synth.spec import SYNTH_FINDINGS
from ml.tokenizer import tokenize
from ml.training.images import model_input

# The node's shipped catalogue, found by path (ml/ does not import dicom_node): beside ml/ in a
# checkout and in an installed wheel alike. Its prompts are CheXzero's templates anyway.
_SHIPPED_CATALOGUE = (Path(__file__).resolve().parents[2] / "dicom_node" / "shipped" / "config"
                      / "findings.toml")


@dataclass(frozen=True)
class PromptPair:
    label: str
    positive: str
    negative: str


def default_prompts(labels: Sequence[str]) -> list[PromptPair]:
    """The catalogue's prompt pairs for these labels when the catalogue loads, else
    CheXzero's templates "{label}" / "no {label}"."""
    by_label: dict[str, PromptPair] = {}
    try:
        from ml.catalogue import load_catalogue

        catalogue = load_catalogue(_SHIPPED_CATALOGUE)
        for f in catalogue.findings:
            by_label[f.label.lower()] = PromptPair(f.label, f.positive_prompt, f.negative_prompt)
    except (ImportError, OSError, ValueError):
        by_label = {}  # no usable catalogue: CheXzero's templates below are the same prompts
    return [by_label.get(label.lower(), PromptPair(label, label, f"no {label}")) for label in labels]


def labels_for(image_paths: Sequence[Path], labels_csv: Path,
               findings: Sequence[str] = SYNTH_FINDINGS) -> dict[str, np.ndarray]:
    """Per finding, one value per image: 1, 0 (negated or blank) or nan (uncertain/unknown)."""
    rows: dict[str, dict[str, str]] = {}
    with labels_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            rows[str((labels_csv.parent / row["Path"]).resolve())] = row
    out = {name: np.full(len(image_paths), np.nan, dtype=np.float32) for name in findings}
    for i, path in enumerate(image_paths):
        row = rows.get(str(Path(path).resolve()))
        if row is None:
            continue
        for name in findings:
            cell = (row.get(name) or "").strip()
            out[name][i] = {"1.0": 1.0, "1": 1.0, "": 0.0, "0.0": 0.0, "0": 0.0}.get(cell, np.nan)
    return out


@torch.no_grad()
def image_features(model: torch.nn.Module, images_320: np.ndarray, image_size: int,
                   device: torch.device, batch: int = 64) -> torch.Tensor:
    feats = []
    for start in range(0, len(images_320), batch):
        chunk = torch.from_numpy(np.asarray(images_320[start:start + batch])).to(device)
        feats.append(F.normalize(model.encode_image(model_input(chunk, image_size)).float(), dim=-1))
    return torch.cat(feats)


@torch.no_grad()
def prompt_pair_scores(model: torch.nn.Module, feats: torch.Tensor,
                       prompts: Sequence[PromptPair], context_length: int) -> np.ndarray:
    """(N, F) probabilities sigmoid(cos(pos) - cos(neg))."""
    texts = [p.positive for p in prompts] + [p.negative for p in prompts]
    tokens = tokenize(texts, context_length).to(feats.device)
    emb = F.normalize(model.encode_text(tokens).float(), dim=-1)
    pos, neg = emb[: len(prompts)], emb[len(prompts):]
    return torch.sigmoid(feats @ pos.T - feats @ neg.T).cpu().numpy()


def auroc_table(scores: np.ndarray, prompts: Sequence[PromptPair],
                labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    out = {}
    for j, prompt in enumerate(prompts):
        y = labels.get(prompt.label)
        if y is None:
            continue
        keep = ~np.isnan(y)
        if keep.sum() < 2 or len(np.unique(y[keep])) < 2:
            continue
        out[prompt.label] = float(roc_auc_score(y[keep], scores[keep, j]))
    return out
