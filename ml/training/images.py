"""Image preparation for training, identical to the zero-shot engine's because it is the
engine's code: `ml.preprocess.to_canvas` (step A: 8-bit image to 320 x 320) once per image into
the cache, `ml.preprocess.canvases_to_input` (step B: normalise, bicubic without antialias) per
batch. See /work/shared/chexzero-reference.md sections A and B."""

from __future__ import annotations

import numpy as np
import torch

from ml.preprocess import CANVAS, canvases_to_input, to_canvas

SIZE_A = CANVAS


def to_320(image: np.ndarray) -> np.ndarray:
    """Step A on a 2-D uint8 image: (320, 320) uint8."""
    return to_canvas(np.ascontiguousarray(image, dtype=np.uint8))


def model_input(batch_320: torch.Tensor, image_size: int) -> torch.Tensor:
    """Step B on (N, 320, 320) uint8 (or float 0..255 after augmentation): (N, 3, size, size)."""
    return canvases_to_input(batch_320, image_size)
