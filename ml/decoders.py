"""One frame of compressed Pixel Data decoded by the fastest decoder that gives the reference
decoder's pixels, and at a reduced resolution where the codestream allows it.

Full resolution (`decode_fast`): imagecodecs, for the syntaxes where it decodes the test
corpus pixel for pixel as pydicom's plugins do (tests/test_decoders.py) and faster. Measured on a
2500x3000 12-bit DX, 2 busy cores, best of 2 (bench/inference.py prints the rates of a run):

| syntax | pydicom's plugin | imagecodecs |
|---|---|---|
| JPEG lossless (process 14, SV1) | pylibjpeg-libjpeg 0.32 s | libjpeg-turbo 0.09 s |
| JPEG-LS | pyjpegls 0.28 s | CharLS 0.22 s |
| JPEG 2000 | pylibjpeg-openjpeg 1.03 s | openjpeg, 2 threads, 0.86 s |

Lossy JPEG (baseline 8-bit, extended 12-bit) stays with pydicom's choice: libjpeg-turbo's
inverse DCT differs from Pillow's and libjpeg's by one grey level here and there. RLE and
native data are already fast in pydicom. Any failure of a fast decoder falls back to pydicom
(`ml.dicom_image.decode_frame`), so the chain only ever gains speed.

Reduced resolution (`decode_reduced`): a radiograph of 2500x3000 becomes a 266x320 image on
the model's canvas, so decoding every pixel is mostly wasted.

- JPEG 2000 keeps the image at every power-of-two scale (its wavelet levels): Pillow's
  openjpeg decoder with `reduce = r` reads only the low-resolution subbands (0.03 s instead of
  1 s for r = 3 on the image above).
- Baseline 8-bit JPEG can be decoded DCT-scaled by 1/2, 1/4 or 1/8 (Pillow's `draft`,
  libjpeg's scaled inverse DCT).

The scale is the largest whose long side stays at or above the model's 320-pixel canvas, so
step A still shrinks (never enlarges) the image; the 8-bit image is then resized to the size
the full image would get, so the canvas keeps its geometry. JPEG-LS, lossless JPEG, RLE and
12-bit JPEG have no such levels (or no installed decoder offers them) and are decoded in full.

It is off by default (`[model] reduced_resolution`): against a full decode, the demo model's
scores moved by up to 0.077 (mean 0.007) with `equalize` and 0.0067 (mean 0.0005) with `voi`
on the varied synthetic set of bench/inference.py (1024-2048 rows, 12/14 bits, MONOCHROME1/2;
JPEG 2000 lossless and lossy, baseline JPEG; 12 images x 13 findings), above the 0.002 that would let it change scores unasked. The
equalisation histogram of a smoothed, smaller image is not the full image's, and the model
trained on equalised images notices.

One level finer does not reach that bound either: decoding to a long side of at least 640
(twice the canvas) on the same set with 3000-row images added (18 images x 13 findings)
halved the changes, max 0.057 (mean 0.0075) with `equalize` and 0.0056 (mean 0.0004) with
`voi` (320: 0.077 and 0.011 on that set), for 87 instead of 35 ms per 3000-row image (416 ms
decoded in full; one run on a loaded 2-core machine). So the rule stays at 320.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

FAST_SYNTAXES = (
    JPEGLossless, JPEGLosslessSV1, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
)
REDUCIBLE_SYNTAXES = (JPEG2000Lossless, JPEG2000, JPEGBaseline8Bit)
MAX_JPEG_SCALE = 3  # libjpeg scales by 1/2, 1/4, 1/8
J2K_THREADS = 2  # openjpeg's own threads per decode
# Largest |score change| seen from reduced-resolution decoding (bench/inference.py's table,
# demo model, synthetic set); tests/test_decoders.py holds scores to it.
REDUCED_DP_BOUND = {"equalize": 0.1, "voi": 0.01}


@dataclass(frozen=True)
class Reduced:
    """A frame decoded at 1 / 2**`level` of its size (rows, columns of `pixels`)."""

    pixels: np.ndarray
    level: int


def frame_bytes(ds: Dataset, source: Dataset | Path) -> bytes:
    """The first frame's compressed bytes, read from the file `source` when the Pixel Data of
    `ds` was left on disk (only that frame's fragments are read)."""
    element = ds.get_item("PixelData", keep_deferred=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if isinstance(source, Path) and element is not None and element.value is None:
        with source.open("rb") as f:
            f.seek(element.value_tell)
            return get_frame(f, 0, number_of_frames=frames)
    return get_frame(ds.PixelData, 0, number_of_frames=frames)


def fast_decodable(ds: Dataset, syntax: UID) -> bool:
    """True when `decode_fast` handles this image: one of FAST_SYNTAXES, one grey sample,
    unsigned, 8 or 16 bits allocated (anything else goes to pydicom's plugins)."""
    return syntax in FAST_SYNTAXES and _plain_grey(ds)


def decode_fast(ds: Dataset, source: Dataset | Path, syntax: UID) -> np.ndarray:
    """The first frame, (rows, columns), in the dtype pydicom gives (uint8 or uint16), decoded
    by imagecodecs. Raises whatever the decoder raises (the caller falls back)."""
    import imagecodecs

    data = frame_bytes(ds, source)
    if syntax in (JPEG2000Lossless, JPEG2000):
        pixels = imagecodecs.jpeg2k_decode(data, numthreads=J2K_THREADS)
    elif syntax in (JPEGLSLossless, JPEGLSNearLossless):
        pixels = imagecodecs.jpegls_decode(data)
    else:
        pixels = imagecodecs.jpeg8_decode(data)
    return _as_stored(ds, pixels)


def reduction_level(columns: int, rows: int, fit: int, most: int) -> int:
    """The largest r <= `most` with the long side of ceil(size / 2**r) still >= `fit`."""
    level, long_side = 0, max(columns, rows)
    while level < most and -(-long_side // 2 ** (level + 1)) >= fit:
        level += 1
    return level


def decode_reduced(
    ds: Dataset, source: Dataset | Path, syntax: UID, fit: int
) -> Reduced | None:
    """The first frame at the smallest power-of-two reduction whose long side stays >= `fit`
    pixels, in the dtype pydicom gives; None when the image does not allow one (wrong syntax,
    colour, signed, codestream precision above Bits Stored, too small already, no levels).
    Raises what Pillow raises for a corrupt codestream (the caller decodes in full instead)."""
    if syntax not in REDUCIBLE_SYNTAXES or not _plain_grey(ds):
        return None
    columns, rows = int(ds.Columns), int(ds.Rows)
    data = frame_bytes(ds, source)
    if syntax == JPEGBaseline8Bit:
        level = reduction_level(columns, rows, fit, MAX_JPEG_SCALE)
        return _jpeg_scaled(ds, data, level) if level else None
    header = j2k_header(data)
    if header is None or header.signed or header.precision > int(ds.BitsStored):
        return None
    level = reduction_level(header.columns, header.rows, fit, header.levels)
    return _j2k_reduced(ds, data, level, header.precision) if level else None


def _jpeg_scaled(ds: Dataset, data: bytes, level: int) -> Reduced | None:
    with Image.open(io.BytesIO(data)) as image:
        if image.mode != "L":
            return None
        scale = 2**level
        image.draft("L", (max(image.width // scale, 1), max(image.height // scale, 1)))
        image.load()
        pixels = np.asarray(image)
    achieved = _level_of(int(ds.Columns), pixels.shape[1])
    return Reduced(_as_stored(ds, pixels), achieved) if achieved else None


def _j2k_reduced(ds: Dataset, data: bytes, level: int, precision: int) -> Reduced:
    with Image.open(io.BytesIO(data)) as image:
        image.reduce = level
        image.load()
        pixels = np.asarray(image)
    # Pillow scales the codestream's precision up to the 8 or 16 bits of its mode
    shift = 8 * pixels.itemsize - precision
    if shift:
        pixels = pixels >> shift
    return Reduced(_as_stored(ds, pixels), level)


def _level_of(full: int, reduced: int) -> int:
    level = 0
    while level < MAX_JPEG_SCALE and -(-full // 2 ** (level + 1)) >= reduced:
        level += 1
    return level


@dataclass(frozen=True)
class J2kHeader:
    """What the main header of a JPEG 2000 codestream says about its first component."""

    columns: int
    rows: int
    precision: int
    signed: bool
    levels: int  # wavelet decomposition levels: the most `reduce` can discard


def j2k_header(data: bytes) -> J2kHeader | None:
    """SIZ and COD/COC of a J2K codestream (a JP2 file's codestream box is searched for);
    None when they cannot be found. Source: ITU-T T.800 Annex A.5.1 and A.6.1-A.6.2."""
    start = data.find(b"\xff\x4f\xff\x51")
    if start < 0:
        return None
    position, size, levels = start + 2, None, None
    while position + 4 <= len(data):
        marker, length = struct.unpack(">HH", data[position : position + 4])
        body = data[position + 4 : position + 2 + length]
        if marker == 0xFF51 and len(body) >= 39:  # SIZ
            x1, y1, x0, y0 = struct.unpack(">IIII", body[2:18])
            ssiz = body[36]
            size = (x1 - x0, y1 - y0, (ssiz & 0x7F) + 1, bool(ssiz & 0x80))
        elif marker == 0xFF52 and len(body) >= 6:  # COD: SPcod starts with the level count
            levels = body[5] if levels is None else min(levels, body[5])
        elif marker == 0xFF53 and len(body) >= 3:  # COC for a component: override its levels
            levels = min(levels, body[2]) if levels is not None else body[2]
        elif marker in (0xFF90, 0xFF93):  # SOT or SOD: the main header is over
            break
        position += 2 + length
    if size is None or levels is None:
        return None
    return J2kHeader(size[0], size[1], size[2], size[3], int(levels))


def _plain_grey(ds: Dataset) -> bool:
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    return (
        int(ds.get("SamplesPerPixel", 1) or 1) == 1
        and photometric in ("MONOCHROME1", "MONOCHROME2")
        and int(ds.get("PixelRepresentation", 0) or 0) == 0
        and int(ds.get("BitsAllocated", 0) or 0) in (8, 16)
        and int(ds.get("NumberOfFrames", 1) or 1) == 1
    )


def _as_stored(ds: Dataset, pixels: np.ndarray) -> np.ndarray:
    """`pixels` as pydicom would return them: 2-D, unsigned of Bits Allocated."""
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim != 2 or pixels.dtype.kind != "u":
        raise ValueError(f"decoder gave {pixels.dtype} {pixels.shape}, not one grey plane")
    dtype = np.dtype(f"uint{int(ds.BitsAllocated)}")
    if pixels.dtype.itemsize > dtype.itemsize and int(pixels.max()) > np.iinfo(dtype).max:
        raise ValueError(f"decoded values exceed Bits Allocated ({int(ds.BitsAllocated)})")
    return pixels.astype(dtype, copy=False)
