"""A straight-line re-implementation of ../shared/chexzero-reference.md, for the engine tests.

Written from the reference text alone, sharing no code with `ml/`: Pillow and numpy for step A,
plain torch ops for step B, an OpenAI-CLIP forward over the raw state-dict tensors (QuickGELU,
heads = width // 64, class token, causal text mask, end-of-text pooling) and numpy scoring.
Each known mistake of the reference's list can be switched on, so tests can show that the
comparison would catch it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image


@dataclass(frozen=True)
class Mistakes:
    antialias: bool = False  # bicubic to 224 with antialias on (torchvision >= 0.17 default)
    round_size: bool = False  # round() instead of int() for the resized size
    bicubic_canvas: bool = False  # Pillow BICUBIC instead of LANCZOS at 320
    resize_uint8_first: bool = False  # resize on 0..255 integers, then normalise
    imagenet_stats: bool = False  # /255 and CLIP/ImageNet mean and std
    logit_scale: bool = False  # multiply cosines by exp(logit_scale)


NONE = Mistakes()
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def step_a(image: np.ndarray, mistakes: Mistakes = NONE) -> np.ndarray:
    img = Image.fromarray(image)
    desired = 320
    old_size = img.size
    ratio = float(desired) / max(old_size)
    if mistakes.round_size:
        new_size = tuple(round(x * ratio) for x in old_size)
    else:
        new_size = tuple(int(x * ratio) for x in old_size)
    resample = Image.BICUBIC if mistakes.bicubic_canvas else Image.LANCZOS
    img = img.resize(new_size, resample)
    new_img = Image.new("L", (desired, desired))
    new_img.paste(img, ((desired - new_size[0]) // 2, (desired - new_size[1]) // 2))
    return np.array(new_img).astype(np.float32)


def step_b(canvas: np.ndarray, size: int, mistakes: Mistakes = NONE) -> torch.Tensor:
    x = torch.from_numpy(np.repeat(canvas[None, :, :], 3, axis=0))  # (3, 320, 320)
    if mistakes.resize_uint8_first:
        x = F.interpolate(x[None], size=(size, size), mode="bicubic", align_corners=False)[0]
        x = x.round().clamp(0, 255)
    if mistakes.imagenet_stats:
        mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        x = (x / 255.0 - mean) / std
    else:
        x = (x - 101.48761) / 83.43944
    if not mistakes.resize_uint8_first and x.shape[-1] != size:
        x = F.interpolate(
            x[None], size=(size, size), mode="bicubic", align_corners=False,
            antialias=mistakes.antialias,
        )[0]
    return x


def _layer_norm(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"], 1e-5)


def _attention(x: torch.Tensor, sd: dict, prefix: str, mask: torch.Tensor | None) -> torch.Tensor:
    n, length, width = x.shape
    heads = max(1, width // 64)
    qkv = x @ sd[prefix + ".in_proj_weight"].T + sd[prefix + ".in_proj_bias"]
    q, k, v = qkv.split(width, dim=-1)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, length, heads, width // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    scores = q @ k.transpose(-1, -2) / math.sqrt(width // heads)
    if mask is not None:
        scores = scores + mask
    out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, length, width)
    return out @ sd[prefix + ".out_proj.weight"].T + sd[prefix + ".out_proj.bias"]


def _blocks(x: torch.Tensor, sd: dict, prefix: str, mask: torch.Tensor | None) -> torch.Tensor:
    i = 0
    while f"{prefix}.{i}.ln_1.weight" in sd:
        p = f"{prefix}.{i}"
        x = x + _attention(_layer_norm(x, sd, p + ".ln_1"), sd, p + ".attn", mask)
        h = _layer_norm(x, sd, p + ".ln_2")
        h = h @ sd[p + ".mlp.c_fc.weight"].T + sd[p + ".mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + h @ sd[p + ".mlp.c_proj.weight"].T + sd[p + ".mlp.c_proj.bias"]
        i += 1
    return x


def encode_image(sd: dict, x: torch.Tensor) -> torch.Tensor:
    conv = sd["visual.conv1.weight"]
    patches = F.conv2d(x, conv, stride=conv.shape[-1])
    n, width = patches.shape[:2]
    patches = patches.reshape(n, width, -1).permute(0, 2, 1)
    cls = sd["visual.class_embedding"].expand(n, 1, width)
    tokens = torch.cat([cls, patches], dim=1) + sd["visual.positional_embedding"]
    tokens = _layer_norm(tokens, sd, "visual.ln_pre")
    tokens = _blocks(tokens, sd, "visual.transformer.resblocks", None)
    return _layer_norm(tokens[:, 0, :], sd, "visual.ln_post") @ sd["visual.proj"]


def tokenize(texts: list[str], context: int = 77) -> torch.Tensor:
    tokenizer = SimpleTokenizer()
    out = torch.zeros(len(texts), context, dtype=torch.long)
    for i, text in enumerate(texts):
        ids = [49406, *tokenizer.encode(text), 49407]
        if len(ids) > context:
            raise RuntimeError(f"Input {text} is too long for context length {context}")
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def encode_text(sd: dict, tokens: torch.Tensor) -> torch.Tensor:
    length = tokens.shape[1]
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    mask = torch.full((length, length), float("-inf")).triu(1)
    x = _layer_norm(_blocks(x, sd, "transformer.resblocks", mask), sd, "ln_final")
    return x[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ sd["text_projection"]


def load_float32(path: str) -> dict:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float() for k, v in sd.items()}


def probabilities(
    images: list[np.ndarray],
    checkpoint_paths: list[str],
    pairs: list[tuple[str, str]],
    mistakes: Mistakes = NONE,
) -> np.ndarray:
    """(N, F) CheXzero probabilities: softmax over (pos, neg) cosines, mean over checkpoints."""
    per_checkpoint = []
    for path in checkpoint_paths:
        sd = load_float32(path)
        size = sd["visual.conv1.weight"].shape[-1] * round(
            (sd["visual.positional_embedding"].shape[0] - 1) ** 0.5
        )
        batch = torch.stack([step_b(step_a(im, mistakes), size, mistakes) for im in images])
        with torch.no_grad():
            img = encode_image(sd, batch).numpy()
            pos = encode_text(sd, tokenize([p for p, _ in pairs])).numpy()
            neg = encode_text(sd, tokenize([n for _, n in pairs])).numpy()
        img = img / np.linalg.norm(img, axis=-1, keepdims=True)
        pos = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
        neg = neg / np.linalg.norm(neg, axis=-1, keepdims=True)
        pos_logits, neg_logits = img @ pos.T, img @ neg.T
        if mistakes.logit_scale:
            scale = float(np.exp(sd["logit_scale"].numpy()))
            pos_logits, neg_logits = pos_logits * scale, neg_logits * scale
        per_checkpoint.append(np.exp(pos_logits) / (np.exp(pos_logits) + np.exp(neg_logits)))
    return np.mean(per_checkpoint, axis=0)
