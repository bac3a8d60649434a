"""Write a synthetic data set: images (DICOM or 8-bit PNG), `labels.csv` in CheXpert layout and
`reports.csv` (path, study, report), all determined by (seed, study index) alone.

Study i of seed S is the same whatever N is and in whatever order it is written; files are
written in index order so that the same seed gives the same bytes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ml.synth.convert import to_uint8_equalized
from ml.synth.render import frontal_shape, render_frontal
from ml.synth.reports import CHEXPERT_COLUMNS, chexpert_labels, write_report
from ml.synth.spec import StudySpec, draw_study

FORMATS = ("dicom", "png")
COMPRESSIONS = ("none", "rle", "jpegls", "j2k")


@dataclass(frozen=True)
class SynthOptions:
    out: Path
    studies: int
    seed: int
    image_format: str = "dicom"
    compress: str = "none"
    height: int = 1024
    workers: int = 1
    laterals: bool = True


@dataclass(frozen=True)
class WrittenImage:
    relpath: str
    frontal: bool
    view: str  # PA | AP | LL


@dataclass(frozen=True)
class WrittenStudy:
    spec: StudySpec
    study_id: str
    report: str
    images: tuple[WrittenImage, ...]


def render_png_bytes(spec: StudySpec, height: int) -> bytes:
    image = render_frontal(spec, *frontal_shape(spec, height))
    buffer = io.BytesIO()
    Image.fromarray(to_uint8_equalized(image), mode="L").save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _study_files(job: tuple[SynthOptions, int]) -> tuple[WrittenStudy, list[tuple[str, bytes]]]:
    options, index = job
    spec = draw_study(options.seed, index)
    report = write_report(spec)
    study_id = f"s{options.seed % 100000:05d}{index:06d}"
    folder = f"p{index % 100:02d}/patient{index:06d}/{study_id}"
    files: list[tuple[str, bytes]] = []
    images: list[WrittenImage] = []
    if options.image_format == "png":
        rel = f"{folder}/view1_frontal.png"
        files.append((rel, render_png_bytes(spec, options.height)))
        images.append(WrittenImage(rel, True, spec.view))
    else:
        from ml.synth.dicom_writer import study_datasets

        for rel, frontal, view, payload in study_datasets(spec, options, folder):
            files.append((rel, payload))
            images.append(WrittenImage(rel, frontal, view))
    return WrittenStudy(spec, study_id, report, tuple(images)), files


def generate(options: SynthOptions,
             progress: Callable[[int], None] | None = None) -> list[WrittenStudy]:
    if options.image_format not in FORMATS:
        raise ValueError(f"unknown image format {options.image_format!r}; one of {', '.join(FORMATS)}")
    if options.compress not in COMPRESSIONS:
        raise ValueError(f"unknown compression {options.compress!r}; one of {', '.join(COMPRESSIONS)}")
    if options.studies < 1:
        raise ValueError("--studies must be at least 1")
    options.out.mkdir(parents=True, exist_ok=True)
    written = []
    for study, files in _run(options):
        for rel, payload in files:
            target = options.out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(payload)
        written.append(study)
        if progress:
            progress(1)
    _write_labels(options.out / "labels.csv", written)
    _write_reports(options.out / "reports.csv", written)
    return written


def _run(options: SynthOptions) -> Iterator[tuple[WrittenStudy, list[tuple[str, bytes]]]]:
    jobs = [(options, i) for i in range(options.studies)]
    if options.workers <= 1:
        yield from map(_study_files, jobs)
        return
    with ProcessPoolExecutor(options.workers) as pool:
        yield from pool.map(_study_files, jobs, chunksize=8)


def _write_labels(path: Path, studies: list[WrittenStudy]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CHEXPERT_COLUMNS)
        for study in studies:
            cells = chexpert_labels(study.spec, study.report)
            for image in study.images:
                meta = [image.relpath, "Female" if study.spec.sex == "F" else "Male",
                        study.spec.age, "Frontal" if image.frontal else "Lateral",
                        image.view if image.frontal else ""]
                writer.writerow(meta + [cells[name] for name in CHEXPERT_COLUMNS[5:]])


def _write_reports(path: Path, studies: list[WrittenStudy]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["Path", "study", "report"])
        for study in studies:
            for image in study.images:
                if image.frontal:
                    writer.writerow([image.relpath, study.study_id, study.report])


def labels_array(spec: StudySpec, findings: tuple[str, ...]) -> np.ndarray:
    """1 present, -1 uncertain, 0 absent per finding: the drawn truth, for evaluation."""
    out = []
    for name in findings:
        state = spec.state(name)
        out.append(0.0 if state is None else (1.0 if state == "present" else -1.0))
    return np.array(out, dtype=np.float32)
