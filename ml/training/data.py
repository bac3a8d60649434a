"""Training inputs: (image, report) pairs from a CSV or from the MIMIC-CXR report layout, and a
cache of the images after step A (320 x 320 uint8), so that every epoch skips decoding.

CSV: one row per image; the image column is the first of Path/path/image/filename/file/
dicom_path present (or the one named), relative paths are resolved beside the CSV; the text
column is `report` (or the one named). MIMIC-CXR: `files/pXX/pXXXXXXXX/sXXXXXXXX.txt` report
files, with the study's images (.dcm, .jpg, .png) in the folder `sXXXXXXXX/` beside each.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.dicom_image import read_image_uint8
from ml.training.images import to_320

IMAGE_COLUMNS = ("Path", "path", "image", "filename", "file", "dicom_path")
TEXT_COLUMNS = ("report", "text", "impression")
IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class Pair:
    image: Path
    text: str


def load_pairs(data: Path, image_column: str | None = None,
               text_column: str | None = None) -> list[Pair]:
    if data.is_dir():
        csv_file = data / "reports.csv"
        if csv_file.is_file():
            return pairs_from_csv(csv_file, image_column, text_column)
        return pairs_from_mimic(data)
    if not data.is_file():
        raise FileNotFoundError(f"training data not found: {data}")
    return pairs_from_csv(data, image_column, text_column)


def pairs_from_csv(path: Path, image_column: str | None = None,
                   text_column: str | None = None) -> list[Pair]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        image_key = _column(columns, image_column, IMAGE_COLUMNS, "image path", path)
        text_key = _column(columns, text_column, TEXT_COLUMNS, "report text", path)
        pairs = [Pair(_resolve(path.parent, row[image_key]), row[text_key] or "")
                 for row in reader if row.get(image_key)]
    if not pairs:
        raise ValueError(f"{path} has no rows with an image path")
    return pairs


def _column(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str,
            path: Path) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(f"{path} has no column {wanted!r} (columns: {', '.join(columns)})")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(f"{path} has no {what} column; expected one of {', '.join(candidates)}")


def _resolve(root: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else root / p


def pairs_from_mimic(root: Path) -> list[Pair]:
    reports = sorted(root.glob("**/p*/p*/s*.txt"))
    pairs = []
    for report in reports:
        folder = report.with_suffix("")
        if not folder.is_dir():
            continue
        text = report.read_text(errors="replace")
        for image in sorted(folder.iterdir()):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                pairs.append(Pair(image, text))
    if not pairs:
        raise ValueError(f"{root} has neither reports.csv nor MIMIC-CXR report files "
                         "(files/pXX/pXXXXXXXX/sXXXXXXXX.txt with image folders beside them)")
    return pairs


def read_uint8(path: Path, conversion: str = "equalize") -> np.ndarray:
    """The 8-bit image the zero-shot engine would see for this file (DICOM, PNG or JPEG)."""
    return np.asarray(read_image_uint8(path, conversion))


def build_cache(pairs: Sequence[Pair], cache_dir: Path, conversion: str = "equalize",
                progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(N, 320, 320) uint8 after step A, stored once per distinct list of image paths."""
    key = hashlib.sha256(
        json.dumps([str(p.image) for p in pairs] + [conversion]).encode()
    ).hexdigest()[:16]
    target = cache_dir / f"images-320-{key}.npy"
    if target.is_file():
        cached = np.load(target, mmap_mode="r")
        if cached.shape == (len(pairs), 320, 320):
            if progress:
                progress(len(pairs))
            return np.array(cached)  # in memory and writable (torch wants writable arrays)
    cache_dir.mkdir(parents=True, exist_ok=True)
    array = np.zeros((len(pairs), 320, 320), dtype=np.uint8)
    for i, pair in enumerate(pairs):
        array[i] = to_320(read_uint8(pair.image, conversion))
        if progress:
            progress(1)
    partial = target.with_suffix(".partial.npy")
    np.save(partial, array)
    partial.replace(target)
    return array
