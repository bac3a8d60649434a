"""From a DICOM radiograph (or a PNG/JPEG file) to the 8-bit grayscale image CheXzero expects.

Section F of ../shared/chexzero-reference.md. The released weights learned MIMIC-CXR-JPG, whose
JPEGs were made from DICOM by scaling to 8 bits, inverting MONOCHROME1 and histogram
equalisation. Two conversions are offered (`[model] dicom_conversion`):

``equalize`` (default, emulates MIMIC-CXR-JPG)
    1. Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, pydicom's
       `apply_modality_lut`).
    2. Scale to 8 bits over the range the image actually uses, padding excluded:
       ``floor((v - min) / (max - min) * 255)`` (a constant image becomes black).
    3. MONOCHROME1: ``255 - v``.
    4. Histogram equalisation exactly as OpenCV's ``equalizeHist`` computes it (the tool the
       MIMIC-CXR-JPG conversion used): 256-bin histogram of the non-padding pixels; the lowest
       occupied grey level maps to 0 and grey level g to ``round_half_even(cum(g) * 255 /
       (total - count(lowest)))`` where cum excludes the lowest level's own count.
    5. Pixel padding set to 0 (black). The JPEG quality-95 round trip MIMIC applied is not
       emulated.

``voi``
    1. Modality LUT as above.
    2. VOI LUT Sequence if present, else Window Center/Width (first pair, VOI LUT Function
       LINEAR, LINEAR_EXACT or SIGMOID), via pydicom's `apply_voi_lut`; the VOI output range
       is mapped linearly to 0..255 and rounded. With neither, the range the image actually
       uses (padding excluded) is mapped to 0..255.
    3. MONOCHROME1 inverted, padding set to 0.

Pixel padding (Pixel Padding Value, with Pixel Padding Range Limit if present) is matched on
stored values, excluded from every statistic and shown black. Colour images are converted to
grey with ITU-R 601 luma weights (as Pillow's "L" mode) and then treated as MONOCHROME2.

Memory stays bounded for large images: every per-pixel function (modality, scaling, inversion,
padding) is evaluated once per possible stored value and applied as one look-up table
(`look_up`: np.take by blocks of rows, so its 8-byte copy of the indexes is one block; an 8-bit
table is applied to pixel pairs). Pixel padding is counted from one histogram on the native bit
depth, not from a padding mask. Beside its decoded array, a 2500x3000 16-bit image with pixel
padding needs about 1.4 bytes a pixel (the 8-bit image, equalised in place, and one block's
copies; 3.2 before issue 16), never a float copy; a test holds it under 4.
Only the first frame of a multi-frame object is used (the node's worker refuses multi-frame
and colour images instead: `prepare_radiograph`). Decoded values keep only their Bits Stored
bits (ml.pixel_data.fit_bits_stored); a copy is made only when some value has bits above High
Bit, so the bound above holds for images that fit their header.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder, pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from ml.decoders import decode_fast, decode_reduced, fast_decodable
from ml.dicom_anatomy import body_part
from ml.dicom_view import FRONTAL, LATERAL, infer_view
from ml.pixel_data import ImageReadError, check_lengths, check_pixel_data, fit_bits_stored
from ml.preprocess import CANVAS, resize_as_full

log = logging.getLogger(__name__)

Conversion = Literal["equalize", "voi"]
CONVERSIONS = ("equalize", "voi")
DEFER_SIZE = 256 * 1024  # bytes: larger values stay on disk until used (or never read)
MAX_PIXELS = 100_000_000  # a 10k x 10k radiograph; anything larger is refused, not swapped
LOOKUP_ROWS = 64  # rows per block in table look-ups and histograms (bounds intp copies)

ELIGIBLE_MODALITIES = ("CR", "DX")
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LLO", "RLO")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420")

# pydicom's plugin per transfer syntax, after imagecodecs (ml.decoders) and before pydicom's own
# choice in the decoder chain; measured on a 2500x3000 12-bit DX (2 cores):
# JPEG 2000 openjpeg 0.87 s vs Pillow 1.30 s; JPEG-LS pyjpegls 0.13 s vs libjpeg 0.57 s;
# RLE pylibjpeg-rle 0.02 s vs pydicom's own 0.18 s; 8-bit JPEG Pillow 0.02 s vs libjpeg 0.10 s.
PREFERRED_DECODER: dict[str, str] = {
    JPEG2000Lossless: "pylibjpeg",
    JPEG2000: "pylibjpeg",
    JPEGLSLossless: "pyjpegls",
    JPEGLSNearLossless: "pyjpegls",
    RLELossless: "pylibjpeg",
    JPEGBaseline8Bit: "pillow",
}


@dataclass(frozen=True)
class Eligibility:
    eligible: bool
    reason: str | None
    flags: tuple[str, ...]


def check_eligibility(ds: Dataset) -> Eligibility:
    """Whether a dataset is a frontal chest radiograph we score; never silent about why not.
    The view comes from ml.dicom_view when ViewPosition is missing; the region from Body Part
    Examined or Anatomic Region Sequence (ml.dicom_anatomy: CHEST, THORAX, chest codes)."""
    flags: list[str] = []
    if "PixelData" not in ds:
        return Eligibility(False, "no pixel data (not an image)", ())
    modality = _text(ds, "Modality")
    if modality not in ELIGIBLE_MODALITIES:
        shown = modality or "missing"
        return Eligibility(False, f"modality {shown} is not CR or DX", ())
    view = _text(ds, "ViewPosition")
    if not view:
        flags.append("view_position_missing")
        refused = _inferred_view(ds, flags)
        if refused is not None:
            return refused
    elif view in LATERAL_VIEWS:
        return Eligibility(False, f"lateral view (ViewPosition {view}); only PA/AP are scored", ())
    elif view not in FRONTAL_VIEWS:
        return Eligibility(False, f"ViewPosition {view} is not a frontal view (PA/AP)", ())
    region = body_part(ds)
    if region is None:
        flags.append("body_part_missing")
    elif not region.chest:
        return Eligibility(False, region.refusal, ())
    elif region.source == "anatomic_region":
        flags.append("body_part_from_anatomic_region")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        flags.append("multi_frame_first_frame_used")
    return Eligibility(True, None, tuple(flags))


def is_chest_radiograph(ds: Dataset) -> bool:
    """True when `ds` is a CR/DX image whose region is the chest or not stated: an image the
    node is meant to score, whether or not it can (a lateral, unreadable pixels...)."""
    if _text(ds, "Modality") not in ELIGIBLE_MODALITIES:
        return False
    region = body_part(ds)
    return region is None or region.chest


def states_chest(ds: Dataset) -> bool:
    """True when Body Part Examined or Anatomic Region Sequence says the chest."""
    region = body_part(ds)
    return region is not None and region.chest


def _inferred_view(ds: Dataset, flags: list[str]) -> Eligibility | None:
    """ViewPosition is missing: the projection other attributes state (ml.dicom_view). A
    frontal one adds its source to `flags`; any other refuses the image (returned)."""
    evidence = infer_view(ds)
    if evidence is None:
        return None
    flags.append(evidence.flag)
    if evidence.kind == FRONTAL:
        return None
    if evidence.kind == LATERAL:
        reason = f"lateral view ({evidence.said}); only PA/AP are scored"
    else:
        reason = f"{evidence.said} is not a frontal view (PA/AP)"
    return Eligibility(False, reason, tuple(flags))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return str(value).strip().upper() if value not in (None, "") else ""


# --- reading files ------------------------------------------------------------------------


def sniff_kind(path: Path) -> str | None:
    """"dicom", "png", "jpeg" or None, from the first bytes of the file."""
    with path.open("rb") as f:
        head = f.read(132)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[128:132] == b"DICM":
        return "dicom"
    return None


def read_dataset(path: str | Path) -> Dataset:
    """The dataset with its pixel data left on disk (read later, only if the image is scored).

    A file without the DICOM preamble is parsed anyway (old exports lack it) but must then look
    like an image (Rows and Pixel Data), else it is "not a DICOM, PNG or JPEG file".
    """
    path = Path(path)
    try:
        headerless = sniff_kind(path) is None
        ds = pydicom.dcmread(path, defer_size=DEFER_SIZE, force=headerless)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise ImageReadError(f"{path}: not a readable DICOM file ({_first_line(exc)})") from None
    if headerless and ("PixelData" not in ds or "Rows" not in ds):
        raise ImageReadError(f"{path}: not a DICOM, PNG or JPEG file")
    if headerless:
        _infer_transfer_syntax(ds)
    try:
        check_lengths(ds, stream_size(ds, path))
    except ImageReadError as exc:
        raise ImageReadError(f"{path}: {exc}") from None
    return ds


def stream_size(ds: Dataset, path: Path) -> int | None:
    """Bytes of the stream that the positions (`value_tell`) of `ds`'s elements refer to, for
    `check_lengths` and `check_pixel_data`: the file's size, except for a Deflated data set,
    which pydicom inflates into memory (`ds.buffer`, where its deferred values are read from):
    the inflated size there (None if that buffer is gone). The node's intake caps the inflated
    size at `[node] max_inflated_mb`."""
    if _transfer_syntax_or_none(ds) != DeflatedExplicitVRLittleEndian:
        return path.stat().st_size
    buffer = getattr(ds, "buffer", None)
    if buffer is None or getattr(buffer, "closed", False):
        return None
    position = buffer.tell()
    size = buffer.seek(0, 2)
    buffer.seek(position)
    return int(size)


def _transfer_syntax_or_none(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    return meta.get("TransferSyntaxUID") if meta is not None else None


def _infer_transfer_syntax(ds: Dataset) -> None:
    """A preamble-less file has no file meta: record the encoding pydicom found."""
    implicit, little = getattr(ds, "original_encoding", (True, True))
    syntax = (
        ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little
        else ExplicitVRBigEndian
    )
    ds.file_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ds.file_meta.setdefault("TransferSyntaxUID", syntax)


def read_image_uint8(path: str | Path, conversion: Conversion = "equalize") -> np.ndarray:
    """A DICOM, PNG or JPEG file as a 2-D uint8 array (eligibility is not checked here)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found")
    if sniff_kind(path) in ("png", "jpeg"):
        return read_bitmap_uint8(path)
    ds = read_dataset(path)
    try:
        check_pixel_data(ds, stream_size(ds, path), single_frame_grey=False, path=path)
        return pixels_to_uint8(ds, decode_pixels(ds, pixel_source(ds, path)), conversion)
    except ImageReadError as exc:
        raise ImageReadError(f"{path}: {exc}") from None


@dataclass(frozen=True)
class Radiograph:
    """One received instance made ready for the model: `pixels` (2-D uint8) when it is scored,
    else `reason` (a sentence for an administrator); `flags` either way."""

    pixels: np.ndarray | None
    reason: str | None
    flags: tuple[str, ...] = ()


def prepare_radiograph(
    ds: Dataset, path: Path, conversion: Conversion, *, reduced: bool = False
) -> Radiograph:
    """The node's reading of one spooled file `path`, whose header `ds` was read with
    `defer_size=DEFER_SIZE`: lengths checked against the file, eligibility, then one greyscale
    frame decoded to its Bits Stored bits and converted to 8 bits (`scoring_uint8`: with
    `reduced`, possibly at reduced resolution and already at step A's size). Never raises for
    a bad image: every problem becomes the `reason` (a multi-frame or colour image is not
    scored here, where `predict` would use its first frame or its luma)."""
    size = stream_size(ds, path)
    try:
        check_lengths(ds, size)
    except ImageReadError as exc:
        return Radiograph(None, str(exc))
    verdict = check_eligibility(ds)
    if not verdict.eligible:
        return Radiograph(None, verdict.reason, verdict.flags)
    flags = tuple(f for f in verdict.flags if f != "multi_frame_first_frame_used")
    try:
        check_pixel_data(ds, size, single_frame_grey=True, path=path)
        image, decoded = scoring_uint8(ds, pixel_source(ds, path), conversion, reduced=reduced)
    except ImageReadError as exc:
        return Radiograph(None, str(exc), flags)
    return Radiograph(image, None, flags + decoded)


def scoring_uint8(
    ds: Dataset, source: Dataset | Path, conversion: Conversion, *, reduced: bool, fast: bool = True
) -> tuple[np.ndarray, tuple[str, ...]]:
    """(image, flags): the 2-D uint8 image to score. With `reduced`, a JPEG 2000 or baseline
    JPEG frame is decoded at reduced resolution (`decode_frame` with `fit`), converted, and
    LANCZOS-resized to the size step A gives the full image (ml.preprocess.resize_as_full):
    its canvas keeps the full image's geometry. Otherwise the full frame, as `decode_frame`.
    `fast`: see `decode_frame`. Raises ImageReadError."""
    fit = CANVAS if reduced else None
    pixels, flags = decode_frame(ds, source, fit=fit, fast=fast)
    image = pixels_to_uint8(ds, pixels, conversion)
    rows, columns = int(ds.Rows), int(ds.Columns)
    if pixels.shape[:2] != (rows, columns):
        image = resize_as_full(image, columns, rows)
    return image, flags


def read_bitmap_uint8(path: Path) -> np.ndarray:
    """PNG/JPEG enter the reference at step A.1: 8-bit grey as is, 16-bit cut with >> 8."""
    try:
        with Image.open(path) as image:
            image.load()
            return bitmap_to_uint8(image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"{path}: unreadable image ({_first_line(exc)})") from None


def bitmap_to_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image)
        return (values.astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image).copy()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


# --- decoding -----------------------------------------------------------------------------


def decode_pixels(ds: Dataset, source: Dataset | Path | None = None) -> np.ndarray:
    """The first frame as decoded by pydicom, with the fastest installed decoder plugin, reduced
    to Bits Stored (`decode_frame`; its flags dropped). Raises ImageReadError."""
    return decode_frame(ds, source)[0]


def decode_frame(
    ds: Dataset, source: Dataset | Path | None = None, *, fit: int | None = None,
    fast: bool = True,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """(pixels, flags): the first frame, (rows, columns) or (rows, columns, samples), with only
    its Bits Stored bits (ml.pixel_data.fit_bits_stored, whatever the transfer syntax).

    `source` may be the file path: then only the pixel data is read from it (the dataset may
    have been read with deferred pixel data). With `fit` (pixels), a JPEG 2000 or baseline JPEG
    frame may come back smaller, at the coarsest power-of-two scale whose long side is still
    >= `fit` (ml.decoders.decode_reduced); the caller tells by the shape. `fast`: imagecodecs
    first where it matches pydicom's decoders (ml.decoders), else pydicom's plugins only (the
    old path, kept for bench/inference.py). Raises ImageReadError with a one-line reason.
    """
    source = ds if source is None else source
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > MAX_PIXELS:
        raise ImageReadError(f"image of {columns}x{rows} pixels exceeds the {MAX_PIXELS} limit")
    syntax = _transfer_syntax(ds)
    if fast and syntax.is_encapsulated:
        pixels = _decode_with_imagecodecs_or_pillow(ds, source, syntax, fit)
        if pixels is not None:
            return fit_bits_stored(ds, pixels)
    index = 0 if int(ds.get("NumberOfFrames", 1) or 1) > 1 else None
    plugin = _preferred_plugin(syntax)
    # unused bits are cleared by fit_bits_stored for every syntax alike (pydicom would clear
    # them only for some, hiding data wider than Bits Stored)
    options = {"index": index, "correct_unused_bits": False}
    try:
        return fit_bits_stored(ds, pixel_array(source, decoding_plugin=plugin, **options))
    except ImageReadError:
        raise
    except Exception as first:  # noqa: BLE001  plugins raise anything; retry with pydicom's choice
        if not plugin:
            raise _undecodable(syntax, first) from None
        log.warning("preferred decoder failed", extra={"plugin": plugin, "syntax": syntax})
    try:
        pixels = pixel_array(source, **options)
    except Exception as exc:  # noqa: BLE001  any decoder failure means "cannot decode"
        raise _undecodable(syntax, exc) from None
    return fit_bits_stored(ds, pixels)


def _decode_with_imagecodecs_or_pillow(
    ds: Dataset, source: Dataset | Path, syntax: UID, fit: int | None
) -> np.ndarray | None:
    """The first links of the decoder chain (ml.decoders): a reduced-resolution decode when
    `fit` allows one, else a faster full decode; None (logged) when neither applies or works."""
    try:
        if fit is not None:
            reduced = decode_reduced(ds, source, syntax, fit)
            if reduced is not None:
                return reduced.pixels
        if fast_decodable(ds, syntax):
            return decode_fast(ds, source, syntax)
    except Exception:  # noqa: BLE001  a faster decoder failing only means the next one is asked
        log.warning("fast decoder failed; pydicom decodes", extra={"syntax": syntax})
    return None


def _undecodable(syntax: UID, exc: BaseException) -> ImageReadError:
    """The decoder's own last line (pydicom lists each plugin's error below a heading)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = lines[-1][:160] if lines else type(exc).__name__
    kind = "compressed pixel data" if syntax.is_encapsulated else "pixel data"
    return ImageReadError(f"the {kind} cannot be decoded ({syntax.name}): {detail}")


def pixel_source(ds: Dataset, path: Path) -> Dataset | Path:
    """Decode straight from the file when it has a preamble: pydicom then reads only the pixel
    data into the array, without a second copy held in the dataset. A Deflated data set is
    decoded from `ds` (already inflated in memory; pydicom cannot decode the file itself)."""
    if _transfer_syntax_or_none(ds) == DeflatedExplicitVRLittleEndian:
        return ds
    return path if getattr(ds, "preamble", None) is not None else ds


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise ImageReadError("the file has no Transfer Syntax UID; cannot decode its pixels")
    return UID(syntax)


def _preferred_plugin(syntax: UID) -> str:
    plugin = PREFERRED_DECODER.get(syntax, "")
    if not plugin:
        return ""
    try:
        return plugin if plugin in get_decoder(syntax).available_plugins else ""
    except NotImplementedError:
        return ""


# --- conversion to 8 bits -----------------------------------------------------------------


def dataset_to_uint8(ds: Dataset, conversion: Conversion = "equalize") -> np.ndarray:
    """A 2-D uint8 image of the dataset's first frame, by the chosen conversion."""
    return pixels_to_uint8(ds, decode_pixels(ds), conversion)


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


def _rgb_to_grey(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype != np.uint8:
        top = max(int(pixels.max()), 1)
        pixels = (pixels.astype(np.float32) * (255.0 / top)).astype(np.uint8)
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB").convert("L"))


def _stretch(grey: np.ndarray) -> np.ndarray:
    values = np.arange(256, dtype=np.float64)
    return _affine_uint8(values, float(grey.min()), float(grey.max()), np.floor)


@dataclass(frozen=True)
class _Lut:
    """Stored pixel values as indexes into a table over every possible value (the domain)."""

    index: np.ndarray  # same shape as the image, integer indexes into `domain`
    domain: np.ndarray  # stored value of each index, int64 (or float for exotic data)
    padding: np.ndarray  # bool per domain entry: is pixel padding
    padding_count: int  # padding pixels in the image
    used: np.ndarray  # bool per domain entry: within the image's min..max and not padding


def _monochrome_to_uint8(
    ds: Dataset, pixels: np.ndarray, conversion: Conversion, invert: bool
) -> np.ndarray:
    lut = _build_lut(ds, pixels)
    values = np.asarray(apply_modality_lut(lut.domain, ds), dtype=np.float64)
    lo, hi = float(values[lut.used].min()), float(values[lut.used].max())
    if conversion == "equalize":
        table = _affine_uint8(values, lo, hi, np.floor)
    elif _has_voi(ds):
        table = _voi_table(ds, values)
    else:
        table = _affine_uint8(values, lo, hi, np.rint)
    if invert:
        table = 255 - table
    table[lut.padding] = 0
    image = look_up(table.astype(np.uint8), lut.index)
    if conversion == "equalize":
        image = equalize_uint8(image, excluded_black=lut.padding_count, in_place=True)
    return image


def look_up(table: np.ndarray, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`table[index]` (any shape of integer `index`) by np.take over blocks of rows: half the
    time of one fancy-indexing pass, and np.take's intp copy of the indexes stays one block
    (LOOKUP_ROWS rows) instead of 8 bytes a pixel. Every index must be within `table` (tables
    here cover every storable value; mode "clip" skips the check and the buffering of `out`,
    which may be `index` itself when the dtypes agree: np.take converts the indexes to intp
    before writing)."""
    out = np.empty(index.shape, dtype=table.dtype) if out is None else out
    if _pairs_apply(table, index, out):
        return out
    if index.ndim < 2:
        return np.take(table, index, out=out, mode="clip")
    for start in range(0, index.shape[0], LOOKUP_ROWS):
        block = slice(start, start + LOOKUP_ROWS)
        np.take(table, index[block], out=out[block], mode="clip")
    return out


def _build_lut(ds: Dataset, pixels: np.ndarray) -> _Lut:
    if pixels.dtype in (np.uint8, np.uint16):
        index, domain = pixels, np.arange(2 ** (8 * pixels.itemsize), dtype=np.int64)
    elif pixels.dtype in (np.int8, np.int16):
        unsigned = np.dtype(f"uint{8 * pixels.itemsize}")
        index = pixels.view(unsigned)
        domain = np.arange(2 ** (8 * pixels.itemsize), dtype=np.int64).astype(unsigned)
        domain = domain.view(pixels.dtype).astype(np.int64)
    else:  # 32-bit or float data: the distinct values are the domain (rare, costs memory)
        domain, inverse = np.unique(pixels, return_inverse=True)
        index = inverse.reshape(pixels.shape)
    padding = _padding_mask(ds, domain)
    if not padding.any():
        lo, hi = pixels.min(), pixels.max()
        used = (domain >= lo) & (domain <= hi)
        return _Lut(index=index, domain=domain, padding=padding, padding_count=0, used=used)
    counts = _value_counts(index, domain.size)
    padding_count = int(counts[padding].sum())
    if padding_count == index.size:
        raise ImageReadError("every pixel is pixel padding; nothing to show")
    occupied = domain[(counts > 0) & ~padding]
    used = (domain >= occupied.min()) & (domain <= occupied.max()) & ~padding
    return _Lut(index=index, domain=domain, padding=padding, padding_count=padding_count, used=used)


def _pairs_apply(table: np.ndarray, index: np.ndarray, out: np.ndarray) -> bool:
    """A 256-entry uint8 table on a uint8 image, looked up two pixels at a time through a
    65536-entry table of pairs (half the look-ups: 1.8x faster here). False: not applicable."""
    if not (table.shape == (256,) and table.dtype == index.dtype == out.dtype == np.uint8
            and index.flags.c_contiguous and out.flags.c_contiguous and index.size % 2 == 0):
        return False
    pairs = np.arange(65536, dtype=np.uint16).view(np.uint8).reshape(-1, 2)  # memory order
    table2 = np.ascontiguousarray(table[pairs]).view(np.uint16).ravel()
    source, target = index.reshape(-1).view(np.uint16), out.reshape(-1).view(np.uint16)
    block = LOOKUP_ROWS * 2048  # pairs
    for start in range(0, source.size, block):
        np.take(table2, source[start : start + block], out=target[start : start + block],
                mode="clip")
    return True


def _value_counts(index: np.ndarray, size: int) -> np.ndarray:
    """Pixels per look-up index (a histogram on the native bit depth), by blocks of rows so
    that np.bincount's intp copy stays one block."""
    counts = np.zeros(size, dtype=np.int64)
    rows = index.reshape(index.shape[0], -1) if index.ndim > 1 else index.reshape(1, -1)
    for start in range(0, rows.shape[0], LOOKUP_ROWS):
        counts += np.bincount(rows[start : start + LOOKUP_ROWS].ravel(), minlength=size)
    return counts


def _padding_mask(ds: Dataset, domain: np.ndarray) -> np.ndarray:
    value = ds.get("PixelPaddingValue")
    if value is None or value == "":
        return np.zeros(domain.shape, dtype=bool)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None or limit == "":
        return domain == int(value)
    low, high = sorted((int(value), int(limit)))
    return (domain >= low) & (domain <= high)


def _affine_uint8(values: np.ndarray, lo: float, hi: float, rounding: Any) -> np.ndarray:
    """rounding((v - lo) / (hi - lo) * 255) clipped to 0..255 (hi < lo inverts); lo == hi: 0."""
    if hi == lo:
        return np.zeros(values.shape, dtype=np.int64)
    return np.clip(rounding((values - lo) / (hi - lo) * 255.0), 0, 255).astype(np.int64)


def _has_voi(ds: Dataset) -> bool:
    window = ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, "")
    return bool(ds.get("VOILUTSequence")) or window


def _voi_table(ds: Dataset, values: np.ndarray) -> np.ndarray:
    """VOI output for every modality value, mapped from the VOI output range to 0..255."""
    if ds.get("VOILUTSequence") and np.array_equal(values, np.round(values)):
        values = values.astype(np.int64)  # a LUT is indexed by integers
    try:
        windowed = np.asarray(apply_voi_lut(values, ds, index=0, prefer_lut=True), np.float64)
        if ds.get("VOILUTSequence"):
            lo, hi = 0.0, float(_voi_lut_top(ds, windowed))
        else:
            with np.errstate(over="ignore"):
                ends = apply_voi_lut(np.array([-1e300, 1e300]), ds, index=0, prefer_lut=False)
            lo, hi = float(ends[0]), float(ends[1])
    except (ValueError, NotImplementedError, AttributeError, IndexError, TypeError) as exc:
        raise ImageReadError(f"invalid VOI LUT or window ({_first_line(exc)})") from None
    return _affine_uint8(windowed, lo, hi, np.rint)


def _voi_lut_top(ds: Dataset, windowed: np.ndarray) -> int:
    """Top of the VOI LUT output range: 2**bits - 1, where a descriptor claiming more bits than
    the data uses (a common vendor error, tolerated by dcmtk too) is read as the data's bits."""
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    used_bits = max(int(windowed.max()).bit_length(), 1)
    return 2 ** min(bits, used_bits) - 1


def equalize_uint8(
    image: np.ndarray, *, stretch: np.ndarray | None = None, excluded_black: int = 0,
    in_place: bool = False,
) -> np.ndarray:
    """OpenCV `equalizeHist` on a 2-D uint8 image (optionally after a 256-entry stretch table).

    `excluded_black` pixels of value 0 (padding) are left out of the histogram and stay 0.
    `in_place`: the result overwrites `image` (a C-contiguous array the caller owns).
    """
    if stretch is not None:
        image, in_place = look_up(stretch.astype(np.uint8), image), True
    image = np.ascontiguousarray(image)
    histogram = np.asarray(Image.fromarray(image).histogram(), dtype=np.int64)
    histogram[0] -= excluded_black
    return look_up(equalization_table(histogram), image, out=image if in_place else None)


def equalization_table(histogram: np.ndarray) -> np.ndarray:
    """The 256-entry table OpenCV's equalizeHist builds from a histogram (uint8 values)."""
    table = np.zeros(256, dtype=np.uint8)
    occupied = np.flatnonzero(histogram)
    if occupied.size == 0:
        return table
    first = int(occupied[0])
    total = int(histogram.sum())
    if histogram[first] == total:
        table[first:] = first
        return table
    scale = np.float32(255.0) / np.float32(total - int(histogram[first]))
    cumulative = np.cumsum(histogram[first + 1:]).astype(np.float32)
    table[first + 1:] = np.clip(np.rint(cumulative * scale), 0, 255).astype(np.uint8)
    return table
