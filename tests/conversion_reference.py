"""The 8-bit conversion as ml.dicom_image computed it before issue 16 (fancy-indexed look-up
table, masked min/max for padding, Pillow histogram and point for equalisation): the reference
the faster conversion must match bit for bit (tests/test_engine_dicom.py), and the old path of
bench/inference.py. Only the parts that changed are copied; the tables come from ml.dicom_image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from ml.dicom_image import (
    _COLOUR,
    _MONOCHROME,
    CONVERSIONS,
    Conversion,
    ImageReadError,
    _affine_uint8,
    _has_voi,
    _padding_mask,
    _rgb_to_grey,
    _stretch,
    _text,
    _voi_table,
    equalization_table,
)


def pixels_to_uint8(ds: Dataset, pixels: np.ndarray, conversion: Conversion) -> np.ndarray:
    if conversion not in CONVERSIONS:
        raise ValueError(f"conversion must be one of {', '.join(CONVERSIONS)}, got {conversion!r}")
    photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    if pixels.ndim == 3 and photometric in _COLOUR + ("PALETTE COLOR",):
        if photometric == "PALETTE COLOR":
            raise ImageReadError("PALETTE COLOR images are not supported")
        grey = _rgb_to_grey(pixels)
        return equalize_uint8(grey, stretch=_stretch(grey)) if conversion == "equalize" else grey
    if pixels.ndim != 2 or photometric not in _MONOCHROME:
        raise ImageReadError(
            f"unsupported image: PhotometricInterpretation {photometric}, shape {pixels.shape}"
        )
    return _monochrome_to_uint8(ds, pixels, conversion, invert=photometric == "MONOCHROME1")


def _monochrome_to_uint8(
    ds: Dataset, pixels: np.ndarray, conversion: Conversion, invert: bool
) -> np.ndarray:
    index, domain, padding, padding_count, used = _build_lut(ds, pixels)
    values = np.asarray(apply_modality_lut(domain, ds), dtype=np.float64)
    lo, hi = float(values[used].min()), float(values[used].max())
    if conversion == "equalize":
        table = _affine_uint8(values, lo, hi, np.floor)
    elif _has_voi(ds):
        table = _voi_table(ds, values)
    else:
        table = _affine_uint8(values, lo, hi, np.rint)
    if invert:
        table = 255 - table
    table[padding] = 0
    image = table.astype(np.uint8)[index]
    if conversion == "equalize":
        image = equalize_uint8(image, excluded_black=padding_count)
    return image


def _build_lut(ds: Dataset, pixels: np.ndarray) -> tuple[Any, ...]:
    if pixels.dtype in (np.uint8, np.uint16):
        index, domain = pixels, np.arange(2 ** (8 * pixels.itemsize), dtype=np.int64)
    elif pixels.dtype in (np.int8, np.int16):
        unsigned = np.dtype(f"uint{8 * pixels.itemsize}")
        index = pixels.view(unsigned)
        domain = np.arange(2 ** (8 * pixels.itemsize), dtype=np.int64).astype(unsigned)
        domain = domain.view(pixels.dtype).astype(np.int64)
    else:
        domain, inverse = np.unique(pixels, return_inverse=True)
        index = inverse.reshape(pixels.shape)
    padding = _padding_mask(ds, domain)
    padding_count = 0
    if padding.any():
        padded = padding[index]
        padding_count = int(np.count_nonzero(padded))
        if padding_count == index.size:
            raise ImageReadError("every pixel is pixel padding; nothing to show")
        keep = ~padded
        info = np.iinfo(pixels.dtype) if pixels.dtype.kind in "iu" else np.finfo(pixels.dtype)
        lo = pixels.min(where=keep, initial=info.max)
        hi = pixels.max(where=keep, initial=info.min)
    else:
        lo, hi = pixels.min(), pixels.max()
    used = (domain >= lo) & (domain <= hi) & ~padding
    return index, domain, padding, padding_count, used


def equalize_uint8(
    image: np.ndarray, *, stretch: np.ndarray | None = None, excluded_black: int = 0
) -> np.ndarray:
    picture = Image.fromarray(image)
    if stretch is not None:
        picture = picture.point(stretch.astype(np.uint8).tolist())
    histogram = np.asarray(picture.histogram(), dtype=np.int64)
    histogram[0] -= excluded_black
    return np.asarray(picture.point(equalization_table(histogram).tolist()))
