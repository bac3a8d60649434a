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

The local features come from the tower's output that scoring computes anyway: the engine keeps
it with a forward hook (`SpatialCapture`) when asked, so a map costs no second pass; `heat_maps`
runs the tower for callers that did not keep them, and both make maps with `ensemble_maps`.

These are approximate attention maps, not segmentations: the local features were never trained
to be classified on their own, and a 7 x 7 grid (ViT-B/32 and RN50 at 224) places evidence to
within about 46 pixels of the 320 canvas.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Self

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP

from ml.preprocess import CANVAS, resized_size


def local_features(model: CLIP, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) model input -> (N, g, g, D) L2-normalised local image embeddings, D the
    joint embedding width, g the grid side (S / 32 for ViT-B/32 and the ResNets). Runs the
    image tower up to its spatial output (`spatial_output`); scoring that already ran the tower
    can keep that output with `SpatialCapture` instead. Raises TypeError for an image tower
    that is neither OpenAI's ViT nor its modified ResNet."""
    visual = model.visual
    if _is_resnet(visual):
        spatial = resnet_grid(visual, pixels)
    elif _is_vit(visual):
        spatial = vit_sequence(visual, pixels)
    else:
        raise TypeError(f"no heat map for image tower {type(visual).__name__}")
    return project_local(visual, spatial)


def spatial_output(visual: torch.nn.Module) -> torch.nn.Module:
    """The submodule of the image tower whose output the maps are made from: the ViT's
    transformer ((N, 1 + g*g, width), class token first) or the ResNet's layer4 ((N, C, g, g)).
    Raises TypeError for any other tower."""
    if _is_resnet(visual):
        return visual.layer4
    if _is_vit(visual):
        return visual.transformer
    raise TypeError(f"no heat map for image tower {type(visual).__name__}")


def project_local(visual: torch.nn.Module, spatial: torch.Tensor) -> torch.Tensor:
    """The tower's spatial output (see `spatial_output`) -> (N, g, g, D) L2-normalised local
    image embeddings, each position projected as the pooled feature is."""
    tokens = _resnet_tokens(visual, spatial) if _is_resnet(visual) else _vit_tokens(visual, spatial)
    return tokens / tokens.norm(dim=-1, keepdim=True)


class SpatialCapture:
    """Keeps the image tower's spatial output of the forward passes run in this thread inside
    the `with` block (a forward hook on `spatial_output`; the tower's output is not touched, so
    scores are unchanged): `outputs` holds one tensor per pass. Other threads running the same
    model meanwhile are not captured. Raises TypeError on entry for an unsupported tower."""

    def __init__(self, model: CLIP) -> None:
        self.module = spatial_output(model.visual)
        self.outputs: list[torch.Tensor] = []
        self._thread = threading.get_ident()
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def __enter__(self) -> Self:
        self._handle = self.module.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._handle is not None:
            self._handle.remove()

    def _keep(self, _module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if threading.get_ident() == self._thread:
            self.outputs.append(output)


def _is_resnet(visual: torch.nn.Module) -> bool:
    return hasattr(visual, "attnpool")


def _is_vit(visual: torch.nn.Module) -> bool:
    return hasattr(visual, "class_embedding")


def vit_sequence(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1 + g*g, width): the transformer's output, class token first (before ln_post)."""
    return visual.transformer(visual._embeds(pixels))


def _vit_tokens(visual: torch.nn.Module, sequence: torch.Tensor) -> torch.Tensor:
    x = visual.ln_post(sequence[:, 1:]) @ visual.proj
    side = round(x.shape[1] ** 0.5)
    return x.reshape(x.shape[0], side, side, -1)


def resnet_grid(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """(N, C, g, g): layer4's output, what the attention pool summarises."""
    x = visual.stem(pixels.to(visual.conv1.weight.dtype))
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    return x


def _resnet_tokens(visual: torch.nn.Module, grid: torch.Tensor) -> torch.Tensor:
    n, c, h, w = grid.shape
    pool = visual.attnpool
    x = grid.reshape(n, c, h * w).permute(0, 2, 1)  # (N, HW, C)
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


def ensemble_maps(members: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                  canvas: int = CANVAS) -> torch.Tensor:
    """The ensemble's maps on the canvas: for each member its (N, g, g, D) local features and
    (F, D) positive and negative prompt embeddings (`prompt_maps`), each member's maps resized
    to the canvas (`to_canvas_grid`), then the mean -> (N, F, canvas, canvas) float32 on the
    CPU. One function for maps from a separate pass and from features kept while scoring.
    Raises ValueError for no member."""
    if not members:
        raise ValueError("members: an ensemble map needs at least one member")
    total = None
    for local, positive, negative in members:
        maps = to_canvas_grid(prompt_maps(local, positive, negative), canvas).float().cpu()
        total = maps if total is None else total + maps
    return total / len(members)


def canvas_to_image(canvas_map: np.ndarray, image_shape: tuple[int, int],
                    size: tuple[int, int] | None = None) -> np.ndarray:
    """A (320, 320) map on the canvas -> (rows, columns) of the original image, or `size`
    (rows, columns), the image at a smaller scale (an overlay's size): the padding that
    `ml.preprocess.to_canvas` added for `image_shape` is cut off and the rest resized
    bilinearly straight to that size. Values unchanged in range; float32."""
    from PIL import Image

    canvas = canvas_map.shape[0]
    rows, columns = image_shape
    out_rows, out_columns = size or image_shape
    w, h = resized_size(columns, rows, canvas)
    left, top = (canvas - w) // 2, (canvas - h) // 2
    crop = np.ascontiguousarray(canvas_map[top : top + h, left : left + w], dtype=np.float32)
    return np.asarray(Image.fromarray(crop, mode="F").resize((out_columns, out_rows),
                                                             Image.Resampling.BILINEAR))


def peak(image_map: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's maximum (the first one if several)."""
    index = int(np.argmax(image_map))
    return divmod(index, image_map.shape[1])
