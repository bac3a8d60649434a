"""Report text to token ids for training, and the sentence sampling that helps small models.

Tokenisation is CheXzero's `preprocess_text`: [start] + BPE + [end]; a report longer than the
context is cut to `context_length` tokens with the last one replaced by end-of-text (training
may truncate; zero-shot prompts may not, see ml.tokenizer).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch

from ml.tokenizer import END_OF_TEXT, token_ids

_ENUMERATION = re.compile(r"(?:(?<=\s)|^)\d+\.\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def tokenize_reports(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    rows = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = token_ids(text)
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = END_OF_TEXT
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


def sentences(text: str) -> list[str]:
    """Sentences of a report section, without "1." style enumeration."""
    cleaned = _ENUMERATION.sub("", text.strip())
    return [s.strip() for s in _SENTENCE_END.split(cleaned) if s.strip()]


def sample_sentences(text: str, rng: np.random.Generator, probability: float,
                     most: int = 3) -> str:
    """With `probability`, 1..`most` sentences of `text` (kept in order); else `text` itself."""
    if probability <= 0 or rng.random() >= probability:
        return text
    parts = sentences(text)
    if len(parts) <= 1:
        return text
    count = int(rng.integers(1, min(most, len(parts)) + 1))
    chosen = sorted(rng.choice(len(parts), size=count, replace=False))
    return " ".join(parts[i] for i in chosen)
