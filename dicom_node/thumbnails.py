"""Pictures for the console's Study page, computed on request (nothing is stored):

- thumbnails of spooled images: the same 8-bit conversion the model sees
  (ml.dicom_image.read_image_uint8 with `[model] dicom_conversion`), downscaled;
- the current result's attention-map overlays (the Secondary Captures of
  dicom_node.reporting.heatmap, read from the outbox), downscaled.

Both as PNG bytes, the longer side at most the size asked for (aspect kept, Lanczos)."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.reporting.heatmap import LABEL
from dicom_node.reporting.uids import heatmap_uids
from storage import results, worklist
from storage.db import Database
from storage.spool import Spool

DEFAULT_SIZE = 256  # pixels, the longer side
OVERLAY_SIZE = 384  # pixels: an overlay carries a text band above the image
HEAT_MAP_LABEL = LABEL  # the words every overlay carries, shown beside it too


class ImageUnavailable(LookupError):
    """No such instance in the study (or no such overlay in its current result), or its file
    is gone (purged) or unreadable; the message says which."""


@dataclass(frozen=True)
class HeatMapOverlay:
    """One attention-map overlay of a study's current result, as the Study page lists it."""

    label: str  # the finding called present
    score: float  # the study score, 0..1 (not a probability)
    threshold: float
    sop_instance_uid: str  # the overlay's
    source_sop_instance_uid: str | None  # the image it is drawn on; None if unreadable


def thumbnail_png(database: Database, spool_root: Path, study_instance_uid: str,
                  sop_instance_uid: str, conversion: str, size: int = DEFAULT_SIZE) -> bytes:
    """PNG (8-bit grey) of the instance, its longer side `size` pixels at most. Raises
    ImageUnavailable."""
    from ml.dicom_image import ImageReadError, read_image_uint8

    with database.read_only() as session:
        detail = worklist.study_detail(session, study_instance_uid)
    instances = {} if detail is None else {i.sop_instance_uid: i for i in detail[1]}
    instance = instances.get(sop_instance_uid)
    if instance is None:
        raise ImageUnavailable("no such image in this study")
    path = spool_root / instance.spool_path
    if not path.is_file():
        raise ImageUnavailable("the image file is gone (purged by retention)")
    try:
        pixels = read_image_uint8(path, conversion)  # type: ignore[arg-type]
    except (ImageReadError, ValueError, OSError) as exc:
        raise ImageUnavailable(f"unreadable: {str(exc)[:200]}") from None
    return _png(pixels, size)


def heat_map_overlays(database: Database, outbox_root: Path,
                      study_instance_uid: str) -> list[HeatMapOverlay]:
    """The attention-map overlays of the study's current (newest) result whose files are still
    in the outbox, highest score first; empty when the study has no result, no finding was
    called present, `[worker] heat_maps_per_study` made none or retention removed them."""
    from pydicom import dcmread

    with database.read_only() as session:
        found = results.results_for_study(session, study_instance_uid)
    if not found:
        return []
    current = found[-1]
    present = sorted((f for f in current.findings if f.present and not f.derivation),
                     key=lambda f: f.probability, reverse=True)
    uids = heatmap_uids(current.result_key, study_instance_uid, current.model_name,
                        version=current.version, labels=[f.label for f in present])
    outbox = Spool(outbox_root)
    overlays = []
    for finding in present:
        sop = uids[finding.label].sop_instance_uid
        if not outbox.exists(study_instance_uid, sop):
            continue
        try:
            header = dcmread(outbox.absolute(outbox.relative_path(study_instance_uid, sop)),
                             stop_before_pixels=True)
            source = str(header.SourceImageSequence[0].ReferencedSOPInstanceUID)
        except (OSError, ValueError, AttributeError, IndexError):
            source = None
        overlays.append(HeatMapOverlay(finding.label, finding.probability, finding.threshold,
                                       sop, source))
    return overlays


def heat_map_png(database: Database, outbox_root: Path, study_instance_uid: str,
                 sop_instance_uid: str, size: int = OVERLAY_SIZE) -> bytes:
    """PNG (RGB) of one of heat_map_overlays(...), its longer side `size` pixels at most.
    Raises ImageUnavailable for any other instance or an unreadable file."""
    from pydicom import dcmread

    listed = {o.sop_instance_uid for o in heat_map_overlays(database, outbox_root,
                                                            study_instance_uid)}
    if sop_instance_uid not in listed:
        raise ImageUnavailable("no such attention map in this study's current result "
                               "(or its file was removed by retention)")
    outbox = Spool(outbox_root)
    path = outbox.absolute(outbox.relative_path(study_instance_uid, sop_instance_uid))
    try:
        rgb = dcmread(path).pixel_array
    except (OSError, ValueError, AttributeError) as exc:
        raise ImageUnavailable(f"unreadable: {str(exc)[:200]}") from None
    return _png(rgb, size)


def _png(pixels: np.ndarray, size: int) -> bytes:
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
