"""Seeded random checkpoints in the released CheXzero file layout, for tests and benchmarks.

Real CheXzero files mix dtypes because training ran on CUDA without `.float()`: Linear/Conv
weights and biases, attention in_proj, `text_projection` and `visual.proj` are float16;
embeddings, LayerNorms and `logit_scale` are float32. `save_released_layout` reproduces that, so
loading code is exercised on what it will meet.
"""

from __future__ import annotations

from pathlib import Path

import torch
from open_clip.model import CLIP

from ml.architecture import ClipArchitecture, build_model, openai_state_dict

# The released input geometry (224 px, patch 32: step B's real 320 -> 224 resize) with narrow,
# shallow transformers: builds in milliseconds, real key names, two heads and two layers each.
TINY = ClipArchitecture(
    embed_dim=64,
    image_size=224,
    patch_size=32,
    vision_width=128,
    vision_layers=2,
    text_width=128,
    text_layers=2,
    context_length=77,
    vocab_size=49408,
)

_FLOAT32_PARTS = (
    "ln_", "class_embedding", "positional_embedding", "token_embedding", "logit_scale"
)


def released_dtype(key: str) -> torch.dtype:
    """The dtype a released CheXzero checkpoint stores this key in."""
    return torch.float32 if any(part in key for part in _FLOAT32_PARTS) else torch.float16


# A modified-ResNet image tower (OpenAI's RN50 layout) at the smallest widths.
TINY_RESNET = ClipArchitecture(
    embed_dim=64, image_size=224, patch_size=32, vision_width=8, vision_layers=4,
    text_width=64, text_layers=1, context_length=77, vocab_size=49408,
    resnet_layers=(1, 1, 1, 1),
)


def random_model(architecture: ClipArchitecture = TINY, seed: int = 0) -> CLIP:
    """A randomly initialised float32 CLIP (open_clip's initialisation), deterministic per seed."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return build_model(architecture).eval()
    finally:
        torch.random.set_rng_state(generator_state)


def released_state_dict(model: CLIP) -> dict[str, torch.Tensor]:
    """The model's tensors under OpenAI key names, each in the dtype the released files use."""
    return {
        k: v.to(released_dtype(k)) if v.is_floating_point() else v  # BatchNorm counters stay ints
        for k, v in openai_state_dict(model).items()
    }


def save_released_layout(model: CLIP, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(released_state_dict(model), path)
    return path


def write_random_checkpoint(
    path: str | Path, architecture: ClipArchitecture = TINY, seed: int = 0
) -> Path:
    """A random checkpoint file as a released one would be laid out."""
    return save_released_layout(random_model(architecture, seed), path)
