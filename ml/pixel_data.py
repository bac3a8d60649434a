"""Is the Pixel Data what the header says it is? Checks before decoding, and Bits Stored after.

Before decoding (no pixel data is read for these):

- `check_lengths`: an element whose length field claims more bytes than the file holds (a
  corrupt length, or a file cut short) is refused with a sentence naming the element. With
  `defer_size` pydicom never reads such a value while parsing; this check keeps it from being
  read later.
- `check_pixel_data`: Rows, Columns, Bits Allocated and Bits Stored make sense; Pixel Data is
  not empty and holds Rows x Columns x Bits Allocated (x frames x samples) bytes, or for
  compressed data its fragments fit inside it; with ``single_frame_grey`` (the node's worker) a
  multi-frame or colour image is refused too, as a CR/DX radiograph must be one greyscale frame.

After decoding, `fit_bits_stored`: only the Bits Stored low bits are the pixel value (PS3.5
8.1.1); the bits above High Bit may carry overlay planes or anything else. pydicom clears them
for native, RLE and JPEG lossless data but not for JPEG 2000 or JPEG-LS, whose codestream may
declare a higher precision than Bits Stored. Whether set high bits are graphics to ignore or
pixel values the header does not describe is told from the image itself: across the edges of
the regions where they are set, the image with them cleared is continuous when they are
graphics (an overlay bar over anatomy), and jumps by about 2**BitsStored when they are part of
the value (data wider than Bits Stored, wrapped by the mask). Graphics are cleared (signed data
is sign-extended from Bits Stored); wider data is refused, never fed to the model wrapped.

Every refusal raises `ImageReadError` with a sentence an administrator can act on.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

BITS_ALLOCATED = (1, 8, 16, 32, 64)
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_UNDEFINED = 0xFFFFFFFF
_ITEM, _SEQUENCE_END = (0xFFFE, 0xE000), (0xFFFE, 0xE0DD)
_EDGE_ROWS = 256  # rows per block when looking at edges: bounds the int32 copies to a block


class ImageReadError(ValueError):
    """The file cannot be read or decoded as an image; the message says why in one line."""


# --- before decoding ----------------------------------------------------------------------


def check_lengths(ds: Dataset, file_size: int | None) -> None:
    """Raise ImageReadError when a top-level element left on disk (deferred) claims more bytes
    than the file has after its start. `file_size` in bytes; None: not from a file, no check."""
    if file_size is None:
        return
    for tag in list(ds.keys()):
        element = ds.get_item(tag, keep_deferred=True)
        if not isinstance(element, RawDataElement) or element.value is not None:
            continue
        if element.length == _UNDEFINED or element.value_tell is None:
            continue
        remaining = max(file_size - element.value_tell, 0)
        if element.length > remaining:
            name = _name(tag)
            raise ImageReadError(
                f"the file is truncated or corrupt: {name} claims {element.length} bytes "
                f"but only {remaining} remain in the file"
            )


def check_pixel_data(
    ds: Dataset, file_size: int | None, *, single_frame_grey: bool, path: Path | None = None
) -> None:
    """Raise ImageReadError unless the Image Pixel attributes and the Pixel Data agree.

    `file_size` in bytes (None: the dataset is not from a file); `path`: the file `ds` was read
    from with deferred values, where compressed Pixel Data left on disk is walked item by item
    (headers only, bounded memory); `single_frame_grey` also refuses multi-frame and colour
    images (a CR/DX radiograph is one greyscale frame).
    """
    if "PixelData" not in ds:
        raise ImageReadError("the file has no Pixel Data (it is not an image)")
    rows, columns = _positive(ds, "Rows"), _positive(ds, "Columns")
    bits_allocated = _positive(ds, "BitsAllocated")
    if bits_allocated not in BITS_ALLOCATED:
        raise ImageReadError(f"Bits Allocated is {bits_allocated}, not 1, 8, 16, 32 or 64")
    bits_stored = _positive(ds, "BitsStored")
    if bits_stored > bits_allocated:
        raise ImageReadError(
            f"Bits Stored ({bits_stored}) is larger than Bits Allocated ({bits_allocated})"
        )
    frames = _count(ds, "NumberOfFrames")
    samples = _count(ds, "SamplesPerPixel")
    if single_frame_grey:
        _check_single_frame_grey(ds, frames, samples)
    element = ds.get_item("PixelData", keep_deferred=True)
    if element is None or element.length == 0:
        raise ImageReadError("Pixel Data is empty")
    if element.length == _UNDEFINED or _is_encapsulated(ds):
        _check_encapsulated(element, path)
        return
    needed = (rows * columns * frames * samples * bits_allocated + 7) // 8
    held = _bytes_held(element, file_size)
    if held < needed:
        raise ImageReadError(
            "the file is truncated: Pixel Data is shorter than Rows x Columns x Bits Allocated"
            f" ({held} of {needed} bytes)"
        )


def _check_single_frame_grey(ds: Dataset, frames: int, samples: int) -> None:
    if frames > 1:
        raise ImageReadError(
            f"multi-frame image ({frames} frames): only single-frame radiographs are scored"
        )
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if samples != 1 or photometric not in _MONOCHROME:
        raise ImageReadError(
            f"colour image (Photometric Interpretation {photometric or 'missing'}, "
            f"{samples} samples per pixel): a CR/DX radiograph must be greyscale"
        )


def _positive(ds: Dataset, keyword: str) -> int:
    value = _int(ds.get(keyword))
    if value is None or value <= 0:
        shown = "missing" if value is None else str(value)
        raise ImageReadError(f"{_spaced(keyword)} is {shown}; the image has no valid size")
    return value


def _count(ds: Dataset, keyword: str) -> int:
    value = _int(ds.get(keyword))
    return 1 if value is None or value < 1 else value


def _int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _spaced(keyword: str) -> str:
    """"BitsAllocated" -> "Bits Allocated" (the attribute's name as the standard writes it)."""
    return "".join(f" {c}" if c.isupper() and i else c for i, c in enumerate(keyword))


def _name(tag: Any) -> str:
    from pydicom.datadict import keyword_for_tag

    keyword = keyword_for_tag(Tag(tag))
    return _spaced(keyword) if keyword else f"element {Tag(tag)}"


def _is_encapsulated(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return bool(syntax) and bool(getattr(syntax, "is_encapsulated", False))


def _check_encapsulated(element: Any, path: Path | None) -> None:
    """The fragments of compressed Pixel Data, read or (deferred) walked in the file."""
    if not (isinstance(element, RawDataElement) and element.value is None):
        value = element.value
        _check_fragments(io.BytesIO(value if isinstance(value, bytes | bytearray) else b""))
        return
    if path is None or element.value_tell is None:
        return  # nothing to walk here; the decoder reports a corrupt codestream in words
    with open(path, "rb") as f:
        f.seek(element.value_tell)
        _check_fragments(f)


def _bytes_held(element: Any, file_size: int | None) -> int:
    """Bytes of native Pixel Data really there: the value read, or for a value left on disk
    its length field capped by what the file holds after the value's start."""
    if isinstance(element, RawDataElement) and element.value is None:
        if file_size is None or element.value_tell is None:
            return int(element.length)
        return max(min(int(element.length), file_size - element.value_tell), 0)
    value = element.value
    return len(value) if isinstance(value, bytes | bytearray) else 0


def _check_fragments(items: BinaryIO) -> None:
    """Walk the items of encapsulated Pixel Data from the current position of `items` (only
    their 8-byte headers are read): each must fit, and one must hold data."""
    start = items.tell()
    end = items.seek(0, io.SEEK_END)
    offset, count, data = items.seek(start), 0, 0
    while offset + 8 <= end:
        group, element, length = struct.unpack("<HHL", items.read(8))
        offset += 8
        if (group, element) == _SEQUENCE_END:
            break
        if (group, element) != _ITEM:
            raise ImageReadError("Pixel Data is corrupt: its compressed fragments are not items")
        if length > end - offset:
            raise ImageReadError(
                f"the file is truncated: a compressed fragment of Pixel Data claims {length} "
                f"bytes but only {end - offset} remain"
            )
        data += length if count else 0  # the first item is the Basic Offset Table
        count += 1
        offset = items.seek(offset + length)
    if data == 0:
        raise ImageReadError("Pixel Data is empty (no compressed frame)")


# --- after decoding -----------------------------------------------------------------------


def fit_bits_stored(ds: Dataset, pixels: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """`pixels` (any shape, integer) reduced to the Bits Stored low bits, sign-extended when
    Pixel Representation is 1 (the dtype is signed). Returns (pixels, flags): the array itself
    when every value already fits (no copy), else a cleared copy and the flag
    ``bits_above_high_bit_cleared``. Raises ImageReadError when the set high bits are part of
    the values (data wider than Bits Stored): masking them would wrap the image."""
    if pixels.dtype.kind not in "iu":
        return pixels, ()
    width = 8 * pixels.itemsize
    bits_stored = _int(ds.get("BitsStored")) or width
    if bits_stored >= width:
        return pixels, ()
    signed = pixels.dtype.kind == "i"
    low, high = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (
        0, (1 << bits_stored) - 1)
    if pixels.size == 0 or (int(pixels.min()) >= low and int(pixels.max()) <= high):
        return pixels, ()
    if not _high_bits_are_graphics(pixels, bits_stored, signed):
        used = int(np.abs(pixels.astype(np.int64, copy=False)).max()).bit_length()
        raise ImageReadError(
            f"the pixel values use {used} bits but Bits Stored is {bits_stored}: the header does"
            " not describe the pixel data (the extra bits are not overlay graphics)"
        )
    fitted = pixels.copy()
    shift = width - bits_stored
    np.left_shift(fitted, shift, out=fitted)
    np.right_shift(fitted, shift, out=fitted)  # arithmetic for signed dtypes: sign-extends
    return fitted, ("bits_above_high_bit_cleared",)


def _high_bits_are_graphics(pixels: np.ndarray, bits_stored: int, signed: bool) -> bool:
    """True when, at the edges of the regions whose high bits are set, the cleared image
    mostly changes by less than a quarter of its range (it is continuous there)."""
    limit = 1 << max(bits_stored - 2, 0)
    small = large = 0
    planes = [pixels] if pixels.ndim == 2 else [pixels[..., s] for s in range(pixels.shape[-1])]
    for plane in planes:
        plane = plane.reshape(plane.shape[0], -1) if plane.ndim != 2 else plane
        for start in range(0, plane.shape[0], _EDGE_ROWS):
            block = plane[start : start + _EDGE_ROWS + 1].astype(np.int64)
            cleared = _cleared(block, bits_stored, signed)
            outside = block != cleared
            for axis in (0, 1):
                edge = np.diff(outside, axis=axis)  # True where exactly one of two neighbours
                jump = np.abs(np.diff(cleared, axis=axis))[edge]
                large += int(np.count_nonzero(jump >= limit))
                small += int(jump.size) - int(np.count_nonzero(jump >= limit))
    return small >= large


def _cleared(block: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    shift = 64 - bits_stored
    if signed:
        return np.right_shift(np.left_shift(block, shift), shift)
    return np.bitwise_and(block, (1 << bits_stored) - 1)
