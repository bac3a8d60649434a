"""Thumbnails of spooled images for the console: the same 8-bit conversion the model sees
(ml.dicom_image.read_image_uint8 with `[model] dicom_conversion`), downscaled to fit a square,
as PNG bytes. Computed on request; nothing is stored."""

from __future__ import annotations

import io
from pathlib import Path

from storage import worklist
from storage.db import Database

DEFAULT_SIZE = 256  # pixels, the longer side


class ImageUnavailable(LookupError):
    """No such instance in the study, or its file is gone (purged) or unreadable; the message
    says which."""


def thumbnail_png(database: Database, spool_root: Path, study_instance_uid: str,
                  sop_instance_uid: str, conversion: str, size: int = DEFAULT_SIZE) -> bytes:
    """PNG (8-bit grey) of the instance, its longer side `size` pixels at most (aspect kept,
    Lanczos). Raises ImageUnavailable."""
    from PIL import Image

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
    image = Image.fromarray(pixels)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
