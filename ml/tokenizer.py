"""CLIP byte-pair tokenizer, offline, as CheXzero's `clip.tokenize` behaves.

open_clip's `SimpleTokenizer` carries the OpenAI BPE vocabulary in its package and cleans text
the same way (ftfy, HTML unescape, whitespace collapse, lower-case). One difference matters:
open_clip truncates a prompt that is too long, while CheXzero raises. A truncated prompt would
silently score something else, so we raise.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from open_clip.tokenizer import SimpleTokenizer

START_OF_TEXT = 49406
END_OF_TEXT = 49407


class PromptTooLongError(ValueError):
    """A prompt needs more tokens than the model's context length."""


@lru_cache(maxsize=1)
def _tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


def token_ids(prompt: str) -> list[int]:
    """The prompt's tokens including start and end of text, without padding."""
    return [START_OF_TEXT, *_tokenizer().encode(prompt), END_OF_TEXT]


def tokenize(prompts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """(len(prompts), context_length) int64 token ids, zero-padded; raise if one does not fit."""
    rows = torch.zeros(len(prompts), context_length, dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids = token_ids(prompt)
        if len(ids) > context_length:
            raise PromptTooLongError(
                f"prompt {prompt!r} is {len(ids)} tokens long; the model's context holds "
                f"{context_length} (including start and end of text)"
            )
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows
