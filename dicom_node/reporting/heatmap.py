"""Where-the-model-looked overlays: one Secondary Capture per finding called present, showing the
chest image the finding was scored on with a translucent map of where the image matched the
finding's positive prompt more than its negative one (`ml.heatmap`), the finding's name, score
and threshold, and the words "approximate attention map, not a segmentation".

RGB, 8 bits, same study, its own series. The map is scaled per image (transparent up to its
median, most opaque and yellow at its maximum): it shows where, not how much. No patient
identification is drawn (Burned In Annotation NO); the caveat is drawn when the model is not
for clinical use.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw
from pydicom import Dataset

from dicom_node.reporting.content import AlgorithmInfo, FindingOutcome, check_algorithm
from dicom_node.reporting.evidence import tolerant_headers
from dicom_node.reporting.render import (
    NOT_FOR_CLINICAL_USE,
    add_file_meta,
    add_series_and_equipment,
    copy_patient_and_study,
    font,
    wrap,
)
from dicom_node.reporting.uids import InstanceUids

LABEL = "approximate attention map, not a segmentation"
MAX_SIDE = 1024  # the overlay is at most this many pixels on its long side
OPACITY = 0.6  # at the map's maximum
SERIES_DESCRIPTION = "AI attention maps"


def render_overlay(
    pixels: np.ndarray, heat: np.ndarray, finding: FindingOutcome, algorithm: AlgorithmInfo
) -> np.ndarray:
    """(rows, columns, 3) uint8 RGB: a text band over the grey `pixels` (2-D uint8, as scored,
    or already `fit_to_overlay`: same result) blended with `heat` (same shape, any range;
    scaled to its own median..max). Raises ValueError when the shapes differ or the map is not
    finite."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8 or heat.shape != pixels.shape:
        raise ValueError(f"pixels: 2-D uint8 with heat of the same shape, got {pixels.shape} "
                         f"{pixels.dtype} and {heat.shape}")
    if not np.isfinite(heat).all():
        raise ValueError("heat: must be finite")
    check_algorithm(algorithm)
    grey, weight = _fit(pixels, heat)  # float32: half the time of float64, same 8-bit result
    colour = np.stack([np.full_like(weight, 255.0), 40.0 + 170.0 * weight,
                       np.zeros_like(weight)], axis=-1)
    alpha = (np.float32(OPACITY) * weight**1.5)[..., None]
    blended = grey[..., None] * (1 - alpha) + colour * alpha
    image = Image.fromarray(np.round(blended).astype(np.uint8), mode="RGB")
    return np.asarray(_with_text_band(image, finding, algorithm))


def overlay_shape(rows: int, columns: int) -> tuple[int, int]:
    """(rows, columns) of the overlay of a rows x columns image: the same aspect, the long side
    at most MAX_SIDE pixels (never enlarged)."""
    scale = min(1.0, MAX_SIDE / max(rows, columns))
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def fit_to_overlay(pixels: np.ndarray) -> np.ndarray:
    """A 2-D uint8 image at its `overlay_shape` (Lanczos). Several findings mapped on one image
    can share it, with maps made at that shape (`ml.heatmap.canvas_to_image`'s `size`)."""
    rows, columns = overlay_shape(*pixels.shape)
    image = Image.fromarray(pixels)
    if image.size == (columns, rows):
        return pixels
    return np.asarray(image.resize((columns, rows), Image.Resampling.LANCZOS))


def _fit(pixels: np.ndarray, heat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grey image and map weight (0..1) at the overlay's size; the map is scaled at the size it
    comes in (the median and maximum of a smooth map barely move with its size)."""
    grey = fit_to_overlay(pixels)
    low, high = float(np.median(heat)), float(heat.max())  # transparent below the median
    weight = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    if weight.shape != grey.shape:
        weight_image = Image.fromarray(weight.astype(np.float32), mode="F")
        weight = np.asarray(weight_image.resize(grey.shape[::-1], Image.Resampling.BILINEAR))
    return grey.astype(np.float32), np.clip(weight, 0.0, 1.0).astype(np.float32)


def _with_text_band(image: Image.Image, finding: FindingOutcome,
                    algorithm: AlgorithmInfo) -> Image.Image:
    width = image.width
    size = max(14, min(36, width // 34))
    bold, plain = font(True, size), font(False, size)
    title = (f"{finding.label}: PRESENT, score {finding.probability:.2f} "
             f"(threshold {finding.threshold:.2f})")
    lines = [(title, bold, (255, 255, 255)),
             (f"Where the model looked: {LABEL}", plain, (255, 200, 120))]
    if not algorithm.clinical_use:
        lines.append((algorithm.caveat, bold, (255, 90, 90)))
    wrapped = [(text, drawn_with, fill) for line, drawn_with, fill in lines
               for text in wrap(line, drawn_with, width - 20)]
    step = round(size * 1.3)
    band = step * len(wrapped) + size
    canvas = Image.new("RGB", (width, image.height + band), (0, 0, 0))
    canvas.paste(image, (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, (text, drawn_with, fill) in enumerate(wrapped):
        draw.text((size // 2, size // 2 + i * step), text, font=drawn_with, fill=fill)
    return canvas


def build_heatmap_sc(
    *,
    source: Dataset,
    pixels: np.ndarray,
    heat: np.ndarray,
    finding: FindingOutcome,
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    content_datetime: datetime.datetime | None = None,
) -> Dataset:
    """A Secondary Capture Image Storage instance (RGB) overlaying `heat` on `pixels`, the 8-bit
    image of `source` that the finding was scored on. Patient and study come from `source`.
    Raises ValueError for a finding not called present or mismatched arrays."""
    if not finding.present:
        raise ValueError(f"finding {finding.label}: heat maps are made for present findings only")
    if finding.derivation:
        raise ValueError(f"finding {finding.label}: a derived score has no map of its own")
    rgb = render_overlay(pixels, heat, finding, algorithm)
    (header,) = tolerant_headers([source])
    when = content_datetime or datetime.datetime.now(datetime.UTC)
    ds = Dataset()
    copy_patient_and_study(ds, header)
    add_series_and_equipment(ds, uids, algorithm, when, SERIES_DESCRIPTION + (
        "" if algorithm.clinical_use else NOT_FOR_CLINICAL_USE))
    _add_rgb_image(ds, rgb, header)
    ds.ImageComments = f"{finding.label}: {LABEL}" + (
        "" if algorithm.clinical_use else f". {algorithm.caveat}")
    ds.DerivationDescription = (
        f"Local prompt evidence for {finding.label} (positive vs negative prompt) over the "
        "scored image: " + LABEL)[:1024]
    add_file_meta(ds)
    return ds


def _add_rgb_image(ds: Dataset, rgb: np.ndarray, source: Dataset) -> None:
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = [reference]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(rgb).tobytes()


def ranked_positives(findings: Sequence[FindingOutcome], cap: int) -> list[FindingOutcome]:
    """The findings to map: present, prompt-scored (not derived), highest score first, at most
    `cap` (0: none)."""
    present = [f for f in findings if f.present and not f.derivation]
    return sorted(present, key=lambda f: f.probability, reverse=True)[: max(0, cap)]
