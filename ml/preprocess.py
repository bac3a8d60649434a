"""From an 8-bit grayscale image to the model's input tensor, exactly as CheXzero does it.

Step A (how CheXzero's training and test images were made) and step B (its zero-shot transform)
of ../shared/chexzero-reference.md. Each detail below moves probabilities by more than the 1e-4
tolerance if changed: the int() truncation of the resized size, Pillow's own 8-bit LANCZOS,
the centred paste with the odd pixel right/bottom, normalising on the 0..255 scale with
CheXzero's statistics, and a bicubic resize without antialias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

CANVAS = 320
CHEXZERO_MEAN = 101.48761
CHEXZERO_STD = 83.43944


class ImageShapeError(ValueError):
    """The array is not a non-empty 2-D uint8 image."""


def resized_size(width: int, height: int, canvas: int = CANVAS) -> tuple[int, int]:
    """(w, h) after scaling the long side to the canvas; int() truncates, so 319 happens."""
    ratio = float(canvas) / max(width, height)
    return int(width * ratio), int(height * ratio)


def to_canvas(image: np.ndarray, canvas: int = CANVAS) -> np.ndarray:
    """Step A: (canvas, canvas) uint8, the image LANCZOS-resized and pasted centred on black.

    The values are the integers the reference stores as float32; uint8 holds them exactly in a
    quarter of the memory.
    """
    if image.ndim != 2 or image.dtype != np.uint8 or image.size == 0:
        raise ImageShapeError(
            f"expected a non-empty 2-D uint8 image, got shape {image.shape} dtype {image.dtype}"
        )
    height, width = image.shape
    size = resized_size(width, height, canvas)
    if min(size) < 1:
        raise ImageShapeError(f"a {width}x{height} image is too narrow to resize to {canvas}")
    resized = Image.fromarray(image).resize(size, Image.Resampling.LANCZOS)
    board = Image.new("L", (canvas, canvas))
    board.paste(resized, ((canvas - size[0]) // 2, (canvas - size[1]) // 2))
    return np.array(board)  # writable: torch refuses read-only buffers


def resize_as_full(image: np.ndarray, width: int, height: int, canvas: int = CANVAS) -> np.ndarray:
    """An image decoded at reduced resolution (ml.decoders), LANCZOS-resized to the size step A
    gives the full `width` x `height` image, so that its canvas has the same geometry (the
    int() truncation of `resized_size` would otherwise move it by a pixel). 2-D uint8 in and
    out; an image already of that size is returned as it is."""
    size = resized_size(width, height, canvas)
    if (image.shape[1], image.shape[0]) == size:
        return image
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def canvases_to_input(canvases: np.ndarray | torch.Tensor, image_size: int) -> torch.Tensor:
    """Step B for a batch: (N, canvas, canvas) uint8 -> (N, 3, image_size, image_size) float32.

    Normalise, then bicubic resize without antialias and without clamping. The three channels
    are identical copies, so the resize runs once and the result is expanded (same numbers).
    """
    # Imported here: decoding processes run step A only and must not pay for loading torch.
    import torch
    import torch.nn.functional as F

    batch = torch.as_tensor(canvases).to(torch.float32)
    if batch.ndim != 3:
        raise ImageShapeError(f"expected (N, H, W) canvases, got shape {tuple(batch.shape)}")
    batch = ((batch - CHEXZERO_MEAN) / CHEXZERO_STD).unsqueeze(1)
    if batch.shape[-1] != image_size or batch.shape[-2] != image_size:
        batch = F.interpolate(
            batch,
            size=(image_size, image_size),
            mode="bicubic",
            align_corners=False,
            antialias=False,
        )
    return batch.expand(-1, 3, -1, -1).contiguous()


def preprocess_uint8(image: np.ndarray, image_size: int) -> torch.Tensor:
    """Steps A and B for one image: (3, image_size, image_size) float32."""
    return canvases_to_input(to_canvas(image)[None], image_size)[0]
