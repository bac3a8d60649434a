"""Where the model looked: per-location prompt evidence maps for the zero-shot scores.

For a finding, the map says where the image matches the positive prompt more than the negative
one. The class token (ViT) or the attention pool's query (ResNet) summarises the whole image;
here the same projection is applied to every spatial position instead:

- ViT towers: each patch token after the last block goes through `ln_post` and `proj`, exactly
  as the class token does (the "patch tokens as image features" reading of CLIP).
- ModifiedResNet towers: each spatial feature of `layer4`, plus its positional embedding, goes
  through the attention pool's value and output projections (`v_proj`, `c_proj`): what the pool
  would return if it attended to that position alone (MaskCLIP, Zhou et al., ECCV 2022).

Per position, the value is the CheXzero score of that local feature,
sigmoid(cos(local, positive) - cos(local, negative)), so a map is on the same 0..1 scale as
the scores (within [0.119, 0.881]) and an ensemble's map is the mean of its members' maps,
each first resized to the 320 x 320 canvas (members may have different grids).

These are approximate attention maps, not segmentations: the local features were never trained
to be classified on their own, and a 7 x 7 grid (ViT-B/32 and RN50 at 224) places evidence to
within about 46 pixels of the 320 canvas.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from ml.preprocess import CANVAS, resized_size


def local_features(model: CLIP, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) model input -> (N, g, g, D) L2-normalised local image embeddings, D the
    joint embedding width, g the grid side (S / 32 for ViT-B/32 and the ResNets). Raises
    TypeError for an image tower that is neither OpenAI's ViT nor its modified ResNet."""
    visual = model.visual
    if hasattr(visual, "attnpool"):
        tokens = _resnet_tokens(visual, pixels)
    elif hasattr(visual, "class_embedding"):
        tokens = _vit_tokens(visual, pixels)
    else:
        raise TypeError(f"no heat map for image tower {type(visual).__name__}")
    return tokens / tokens.norm(dim=-1, keepdim=True)


def vit_sequence(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1 + g*g, width): the transformer's output, class token first (before ln_post)."""
    return visual.transformer(visual._embeds(pixels))


def _vit_tokens(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    x = visual.ln_post(vit_sequence(visual, pixels)[:, 1:]) @ visual.proj
    side = round(x.shape[1] ** 0.5)
    return x.reshape(x.shape[0], side, side, -1)


def resnet_grid(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, C, g, g): layer4's output, what the attention pool summarises."""
    x = visual.stem(pixels.to(visual.conv1.weight.dtype))
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    return x


def _resnet_tokens(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    x = resnet_grid(visual, pixels)
    n, c, h, w = x.shape
    pool = visual.attnpool
    x = x.reshape(n, c, h * w).permute(0, 2, 1)  # (N, HW, C)
    x = x + pool.positional_embedding[1:].to(x.dtype)
    x = pool.c_proj(pool.v_proj(x))
    return x.reshape(n, h, w, -1)


def prompt_maps(local: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """(N, g, g, D) normalised local features, (F, D) normalised positive and negative prompt
    embeddings -> (N, F, g, g) float32 local scores sigmoid(cos_pos - cos_neg) in [0.119, 0.881]."""
    difference = (local.float() @ (positive.float() - negative.float()).T)  # (N, g, g, F)
    return torch.sigmoid(difference).permute(0, 3, 1, 2).contiguous()


def to_canvas_grid(maps: torch.Tensor, canvas: int = CANVAS) -> torch.Tensor:
    """(N, F, g, g) -> (N, F, canvas, canvas), bilinear: every member on one grid before the
    ensemble mean. The model saw the canvas resized to its input size, so the grid spans the
    whole canvas (the black padding included)."""
    return F.interpolate(maps, size=(canvas, canvas), mode="bilinear", align_corners=False)


def canvas_to_image(canvas_map: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """A (320, 320) map on the canvas -> (rows, columns) of the original image: the padding
    that `ml.preprocess.to_canvas` added is cut off and the rest resized bilinearly. Values
    unchanged in range; float32."""
    from PIL import Image

    canvas = canvas_map.shape[0]
    rows, columns = image_shape
    w, h = resized_size(columns, rows, canvas)
    left, top = (canvas - w) // 2, (canvas - h) // 2
    crop = np.ascontiguousarray(canvas_map[top : top + h, left : left + w], dtype=np.float32)
    return np.asarray(Image.fromarray(crop, mode="F").resize((columns, rows),
                                                             Image.Resampling.BILINEAR))


def peak(image_map: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's maximum (the first one if several)."""
    index = int(np.argmax(image_map))
    return divmod(index, image_map.shape[1])
