"""Prompt workbench: scoring a new prompt pair from the stored image embeddings against
re-scoring the same studies' images with a catalogue holding that pair.

A throwaway work list gets N synthetic chest studies scored by the worker with the configured
model (default: the shipped demo model), which stores each image's embedding per checkpoint.
Then, each R times (median), in this process:
- workbench: `dicom_node.workbench.try_prompt` (loads the checkpoints' text towers, one text
  encoding, scores from the stored embeddings);
- re-score: a `ZeroShotEngine` with the new finding, over the same spooled DICOM files (read,
  convert to 8 bits, encode every image).
Prints both medians, their ratio, the largest difference between the two sets of study scores
and the bytes stored per image.

    python bench/workbench.py [--studies N] [--runs R]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicom_node import workbench
from dicom_node.settings import load_settings
from dicom_node.worker import Worker, outbox_for
from storage import results, worklist
from storage.db import open_database
from storage.spool import Spool
from tests.dicom_factory import StudyUids, make_radiograph

PAIR = workbench.PromptPair("Hiatal hernia", "hiatal hernia", "no hiatal hernia")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "node.toml"
        config.write_text(f'[node]\ndata_dir = "{tmp}/data"\n')
        settings = load_settings(config)
        database = open_database(settings.database_url)
        try:
            paths = _scored_studies(settings, database, args.studies)
            trial_times, rescore_times = [], []
            for _ in range(args.runs):
                start = time.perf_counter()
                trial = workbench.try_prompt(database, settings, PAIR, last=args.studies)
                trial_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                rescored = _rescore(settings, paths)
                rescore_times.append(time.perf_counter() - start)
            with database.read_only() as session:
                stored = results.study_embeddings(session, limit=1)[0].images[0]
        finally:
            database.dispose()
    got = dict(trial.scores)
    diff = max(abs(got[uid] - rescored[uid]) for uid in got)
    a, b = statistics.median(trial_times), statistics.median(rescore_times)
    print(f"studies: {len(got)} (one PA image each), model {settings.model.name}")
    print(f"workbench from stored embeddings: {a:.2f} s (median of {args.runs})")
    print(f"re-scoring the images:            {b:.2f} s")
    print(f"ratio re-score / workbench:       {b / a:.1f}x")
    print(f"largest |score difference|:       {diff:.2e}")
    print(f"stored per image: {sum(len(v) for v in stored.values())} bytes "
          f"({len(stored)} checkpoint(s))")


def _scored_studies(settings, database, n: int) -> dict[str, Path]:
    spool, clock = Spool(settings.spool_path), [datetime(2026, 1, 1, tzinfo=UTC)]
    spool.prepare()
    outbox_for(settings).prepare()
    paths = {}
    for i in range(n):
        ds = make_radiograph(view="PA", study=StudyUids(), seed=i, rows=512, columns=448)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        entry = spool.write(ds.StudyInstanceUID, ds.SOPInstanceUID, [buffer.getvalue()])
        paths[ds.StudyInstanceUID] = spool.absolute(entry.relative_path)
        with database.sessions.begin() as session:
            worklist.record_instance(session, worklist.InstanceRecord(
                ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPClassUID,
                ds.file_meta.TransferSyntaxUID, "DX", "CHEST", "PA", entry.relative_path,
                entry.size_bytes, "BENCH"), clock[0])
    clock[0] += timedelta(minutes=1)
    with database.sessions.begin() as session:
        worklist.queue_stable_studies(session, 1, clock[0])
    worker = Worker(settings=settings, database=database, spool=spool,
                    outbox=outbox_for(settings), clock=lambda: clock[0])
    while worker.run_once() is not None:
        pass
    return paths


def _rescore(settings, paths: dict[str, Path]) -> dict[str, float]:
    from ml.catalogue import parse_catalogue
    from ml.engine import ZeroShotEngine

    catalogue = parse_catalogue({"finding": [{
        "label": PAIR.label, "positive_prompt": PAIR.positive, "negative_prompt": PAIR.negative,
        "code": {"value": "X", "scheme": "99DCMNODE", "meaning": "x"}, "default_threshold": 0.5,
    }]})
    checkpoints = [settings.resolve(p) for p in settings.model.checkpoints]
    with ZeroShotEngine(checkpoints, catalogue, device=settings.model.device,
                        batch_size=settings.model.batch_size) as engine:
        scored = engine.score_paths(list(paths.values()), settings.model.dicom_conversion)
    return {uid: s.probabilities[PAIR.label] for uid, s in zip(paths, scored, strict=True)}


if __name__ == "__main__":
    main()
