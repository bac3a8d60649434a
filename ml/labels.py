"""Labels CSV in CheXpert layout: a path column plus one column per finding.

Cells hold 1 (positive), 0 (negative), -1 (uncertain) or nothing (blank: the report did not
mention the finding); CheXpert writes them as `1.0`, `0.0`, `-1.0`. Columns are matched to the
catalogue's finding labels case-insensitively; CheXpert's metadata columns (Sex, Age,
Frontal/Lateral, AP/PA) are ignored, any other unmatched column is reported back.

The policy for uncertain and blank cells is explicit (`LabelPolicy`), per finding and per image:
- uncertain (-1): `exclude` (default, CheXpert's U-Ignore: the image does not count for that
  finding), `positive` (U-Ones) or `negative` (U-Zeros);
- blank: `negative` (default: CheXpert's labeller leaves a finding blank when the report does
  not mention it, and CheXpert's own training treats that as negative) or `exclude`.
CheXpert's validation and test labels are all 0/1, so the policy only matters for other files.

Image paths: absolute as written; a relative path is looked up under `images_root` when given,
else beside the CSV, else beside the CSV's folder (CheXpert's `Path` column starts with the
dataset folder, e.g. `CheXpert-v1.0/valid/...`, and the CSV sits inside that folder).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml.defaults import BLANK_POLICIES, UNCERTAIN_POLICIES

PATH_COLUMNS = ("path", "image", "filename", "file")
METADATA_COLUMNS = ("sex", "age", "frontal/lateral", "ap/pa")
_VALUES = {"1": 1.0, "1.0": 1.0, "0": 0.0, "0.0": 0.0, "-1": -1.0, "-1.0": -1.0}


@dataclass(frozen=True)
class LabelPolicy:
    uncertain: str = "exclude"
    blank: str = "negative"

    def __post_init__(self) -> None:
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise ValueError(f"uncertain policy must be one of {', '.join(UNCERTAIN_POLICIES)}")
        if self.blank not in BLANK_POLICIES:
            raise ValueError(f"blank policy must be one of {', '.join(BLANK_POLICIES)}")

    def describe(self) -> str:
        return f"uncertain={self.uncertain}, blank={self.blank}"


@dataclass(frozen=True)
class LabelledSet:
    """`labels[i, j]` is 1.0, 0.0 or NaN (excluded by the policy or no column) for image i,
    finding j; `uncertain`/`blank` count the raw cells per finding before the policy."""

    csv_path: Path
    paths: tuple[Path, ...]
    findings: tuple[str, ...]
    labels: np.ndarray
    policy: LabelPolicy
    uncertain: dict[str, int] = field(default_factory=dict)
    blank: dict[str, int] = field(default_factory=dict)
    missing_columns: tuple[str, ...] = ()
    unknown_columns: tuple[str, ...] = ()


def read_labels(
    csv_path: Path,
    findings: Sequence[str],
    policy: LabelPolicy = LabelPolicy(),
    images_root: Path | None = None,
) -> LabelledSet:
    """Read the CSV, apply `policy`, resolve every image path (all must exist)."""
    rows, header = _read_rows(csv_path)
    path_column = _path_column(header, csv_path)
    by_name = {name.strip().lower(): name for name in header}
    columns = {f: by_name.get(f.lower()) for f in findings}
    known = (
        {c.lower() for c in columns.values() if c} | {path_column.lower()} | set(METADATA_COLUMNS)
    )
    labels = np.full((len(rows), len(findings)), np.nan)
    uncertain, blank = {}, {}
    for j, finding in enumerate(findings):
        column = columns[finding]
        if column is None:
            continue
        raw = np.array([_cell(row, column, i, csv_path) for i, row in enumerate(rows)])
        uncertain[finding] = int(np.sum(raw == -1))
        blank[finding] = int(np.sum(np.isnan(raw)))
        labels[:, j] = _apply_policy(raw, policy)
    paths = tuple(_resolve(row[path_column], csv_path, images_root) for row in rows)
    _check_exist(paths)
    return LabelledSet(
        csv_path=csv_path,
        paths=paths,
        findings=tuple(findings),
        labels=labels,
        policy=policy,
        uncertain=uncertain,
        blank=blank,
        missing_columns=tuple(f for f, c in columns.items() if c is None),
        unknown_columns=tuple(h for h in header if h.strip().lower() not in known),
    )


def _read_rows(csv_path: Path) -> tuple[list[dict[str, str]], list[str]]:
    with Path(csv_path).open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    if not header:
        raise ValueError(f"{csv_path}: empty labels file")
    if not rows:
        raise ValueError(f"{csv_path}: no images listed")
    return rows, header


def _path_column(header: list[str], csv_path: Path) -> str:
    for name in header:
        if name.strip().lower() in PATH_COLUMNS:
            return name
    raise ValueError(f"{csv_path}: no path column (expected one named {', '.join(PATH_COLUMNS)})")


def _cell(row: dict[str, str], column: str, index: int, csv_path: Path) -> float:
    text = (row.get(column) or "").strip()
    if not text:
        return np.nan
    if text not in _VALUES:
        raise ValueError(
            f"{csv_path}: row {index + 2}, column {column!r}: {text!r} is not 1, 0, -1 or blank"
        )
    return _VALUES[text]


def _apply_policy(raw: np.ndarray, policy: LabelPolicy) -> np.ndarray:
    out = raw.copy()
    uncertain_to = {"exclude": np.nan, "positive": 1.0, "negative": 0.0}[policy.uncertain]
    out[raw == -1] = uncertain_to
    out[np.isnan(raw)] = 0.0 if policy.blank == "negative" else np.nan
    return out


def _resolve(text: str, csv_path: Path, images_root: Path | None) -> Path:
    written = Path((text or "").strip())
    if not str(written) or str(written) == ".":
        raise ValueError(f"{csv_path}: a row has an empty path")
    if written.is_absolute():
        return written
    bases = [images_root] if images_root is not None else [csv_path.parent, csv_path.parent.parent]
    for base in bases:
        if (base / written).exists():
            return (base / written).resolve()
    return (bases[0] / written).resolve()


def _check_exist(paths: tuple[Path, ...]) -> None:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} image(s) in the labels file not found, first: {missing[0]}"
        )
