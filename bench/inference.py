"""Images per second of the whole scoring pipeline against the model's forward pass alone.

    python bench/inference.py [--images 32] [--batch-size 16] [--syntax raw j2k jls]
                              [--mode threads processes] [--workers N] [--device auto]
                              [--repeats 2]

Writes realistic 2500x3000 16-bit (12 bits stored) DX files in a temporary folder, uncompressed
and encoded with JPEG 2000 (lossless, openjpeg) and JPEG-LS (lossless, CharLS), builds a random
checkpoint of the released ViT-B/32 size, then for each transfer syntax measures in one run:

- pipeline: `ZeroShotEngine.score_paths` (DICOM read, decode, 8-bit conversion, step A on the
  worker threads; step B, model, scoring on the caller), and
- model: `encode_image` alone on already-prepared (N, 3, 224, 224) tensors, same batch size,

and prints both rates and their ratio, each the best of `--repeats` alternating runs (other
load on a shared machine only ever slows a run down). The target on CPU is a ratio of 0.7 or
more for uncompressed input. For context: serial preparation cost per image (read, decode,
8-bit conversion, step A) and the preparation rate of the workers alone, per mode.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    generate_uid,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dicom_node.shipped import findings_file
from ml.architecture import ClipArchitecture
from ml.catalogue import load_catalogue
from ml.engine import ZeroShotEngine
from ml.prepare import PREPARE_MODES, prepare_file
from ml.preprocess import canvases_to_input
from ml.testing import write_random_checkpoint

SYNTAXES = {"raw": ExplicitVRLittleEndian, "j2k": JPEG2000Lossless, "jls": JPEGLSLossless}
ROWS, COLUMNS = 3000, 2500
DISTINCT = 4  # distinct images per syntax; the rest are copies under other names


def radiograph(seed: int) -> np.ndarray:
    """A chest-like 12-bit image: body, two lungs, ribs, a spine, detector noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    y /= ROWS
    x /= COLUMNS
    body = np.exp(-(((x - 0.5) / 0.42) ** 6 + ((y - 0.55) / 0.5) ** 6))
    lungs = sum(np.exp(-(((x - c) / 0.13) ** 2 + ((y - 0.48) / 0.25) ** 2)) for c in (0.32, 0.68))
    ribs = 0.08 * np.sin(2 * np.pi * (y * 14 + 0.8 * np.abs(x - 0.5))) * lungs
    spine = np.exp(-(((x - 0.5) / 0.035) ** 2))
    values = 600 + 1400 * body + 1500 * lungs * (1 + ribs) - 500 * spine * body
    values += rng.normal(0, 25, values.shape).astype(np.float32)
    return np.clip(values, 0, 4095).astype(np.uint16)


def write_inputs(folder: Path, syntax_name: str, count: int) -> list[Path]:
    originals = []
    for i in range(min(count, DISTINCT)):
        ds = _dataset(radiograph(i))
        if SYNTAXES[syntax_name] != ExplicitVRLittleEndian:
            ds.compress(SYNTAXES[syntax_name])
        path = folder / f"{syntax_name}-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        originals.append(path)
    paths = list(originals)
    for i in range(len(originals), count):
        copy = folder / f"{syntax_name}-{i:03d}.dcm"
        shutil.copyfile(originals[i % len(originals)], copy)
        paths.append(copy)
    return paths


def _dataset(pixels: np.ndarray) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = pixels.tobytes()
    return ds


def bare_model_rate(engine: ZeroShotEngine, canvases: np.ndarray, count: int) -> float:
    """encode_image alone on prepared tensors, `count` images in batches of the engine's size."""
    member = engine._members[0]
    reps = -(-engine.batch_size // len(canvases))
    batch = np.concatenate([canvases] * reps)[: engine.batch_size]
    prepared = canvases_to_input(batch, member.image_size).to(engine.device)
    with torch.inference_mode(), engine._precision_context():
        member.model.encode_image(prepared)  # warm-up
        _sync(engine.device)
        start = time.perf_counter()
        done = 0
        while done < count:
            member.model.encode_image(prepared)
            done += len(prepared)
        _sync(engine.device)
    return done / (time.perf_counter() - start)


def pipeline_rate(engine: ZeroShotEngine, paths: list[Path]) -> float:
    engine.score_paths(paths[: engine.batch_size])  # warm-up: threads, caches, allocator
    _sync(engine.device)
    start = time.perf_counter()
    results = engine.score_paths(paths)
    _sync(engine.device)
    elapsed = time.perf_counter() - start
    failed = [r for r in results if r.probabilities is None]
    if failed:
        raise SystemExit(f"bench inputs failed to score: {failed[0].skipped_reason}")
    return len(results) / elapsed


def serial_prepare_ms(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths[:DISTINCT]:
        prepare_file(path)
    return 1000 * (time.perf_counter() - start) / min(len(paths), DISTINCT)


def prepare_only_rate(engine: ZeroShotEngine, paths: list[Path]) -> float:
    """Preparation alone with the engine's workers: shows whether they decode in parallel."""
    start = time.perf_counter()
    count = sum(1 for _ in engine.preparer.in_order(paths, "equalize", 2 * engine.batch_size))
    return count / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--syntax", nargs="+", choices=sorted(SYNTAXES), default=list(SYNTAXES))
    parser.add_argument("--workers", type=int, default=None, help="preparation threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each rate")
    parser.add_argument("--mode", nargs="+", choices=PREPARE_MODES, default=list(PREPARE_MODES),
                        help="preparation beside the model: threads and/or processes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-inference-") as tmp:
        folder = Path(tmp)
        checkpoint = write_random_checkpoint(folder / "vit-b32.pt", ClipArchitecture(), seed=0)
        engine = ZeroShotEngine(
            [checkpoint], load_catalogue(findings_file()), device=args.device,
            batch_size=args.batch_size, prepare_workers=args.workers,
        )
        print(f"device {engine.device} ({engine.precision}), torch threads "
              f"{torch.get_num_threads()}, preparation workers {engine.preparer.workers}, "
              f"batch {engine.batch_size}, {args.images} images of {COLUMNS}x{ROWS}")
        print(f"{'syntax':<6} {'mode':<10} {'prepare ms':>11} {'prepare/s':>10} {'pipeline/s':>11} "
              f"{'model/s':>8} {'ratio':>6}")
        for name in args.syntax:
            paths = write_inputs(folder, name, args.images)
            canvases = np.stack([prepare_file(p).canvas for p in paths[:DISTINCT]])
            serial = serial_prepare_ms(paths)
            for mode in args.mode:
                engine.close()
                engine.preparer.mode = mode
                prepare = pipeline = model = 0.0
                for _ in range(args.repeats):  # best of each: other load on the machine only slows
                    model = max(model, bare_model_rate(engine, canvases, args.images))
                    pipeline = max(pipeline, pipeline_rate(engine, paths))
                    prepare = max(prepare, prepare_only_rate(engine, paths))
                model = max(model, bare_model_rate(engine, canvases, args.images))
                print(f"{name:<6} {mode:<10} {serial:>11.0f} {prepare:>10.2f} {pipeline:>11.2f} "
                      f"{model:>8.2f} {pipeline / model:>6.2f}", flush=True)
        engine.close()


if __name__ == "__main__":
    main()
