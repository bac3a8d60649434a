"""From a rendered phantom (0..1, 1 densest) to stored detector values and to the 8-bit image
the zero-shot engine would make of them.

`to_uint8_equalized` emulates how MIMIC-CXR-JPG was made from DICOM (scale to 8 bits, histogram
equalisation; MONOCHROME1 already inverted back): the engine's default DICOM conversion. The
PNG output of `dicom-node synth` and the training cache use it, so a model trained on PNGs sees
what the engine shows it when it reads the DICOM files.
"""

from __future__ import annotations

import numpy as np


def to_stored(image: np.ndarray, bits_stored: int, monochrome1: bool) -> np.ndarray:
    """Detector values in 0..2**bits_stored - 1; MONOCHROME1 stores dense as dark (low)."""
    top = (1 << bits_stored) - 1
    values = 1.0 - image if monochrome1 else image
    return np.round(values * top).astype(np.uint16)


def to_uint8_linear(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / max(high - low, 1e-6)
    return np.round(scaled * 255).astype(np.uint8)


def equalize(image: np.ndarray) -> np.ndarray:
    """Histogram equalisation of an 8-bit image (the classic cumulative-histogram mapping)."""
    hist = np.bincount(image.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    first = cdf[np.nonzero(hist)[0][0]]
    total = cdf[-1]
    if total == first:
        return image.copy()
    lut = np.round((cdf - first) / (total - first) * 255).clip(0, 255).astype(np.uint8)
    return lut[image]


def to_uint8_equalized(image: np.ndarray) -> np.ndarray:
    return equalize(to_uint8_linear(image))
