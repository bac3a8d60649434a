"""Work-list scale-out: studies/s claimed and finished by 1, 2, 4 and 8 worker processes on
PostgreSQL and on SQLite, and the database time of one claim.

    python bench/scale.py [--studies 400] [--workers 1,2,4,8]

The model is replaced by nothing heavier than reading the image: each worker process claims a
QUEUED study (the node's own `worklist.claim_next`: FOR UPDATE SKIP LOCKED on PostgreSQL,
BEGIN IMMEDIATE on SQLite), reads its spooled DICOM file with pydicom (pixels decoded), and
completes it (`worklist.complete`), until the queue is empty. So the figures are the ceiling
the work list itself puts on throughput, not the node's speed with a model. PostgreSQL is a
real server started here (the Debian package, fsync on, loopback); SQLite is the node's
default (WAL, synchronous=FULL) in a temporary directory. One run prints a table: studies/s,
the ratio to 1 worker, and the median and 95th percentile of the claim transaction's time.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pydicom

from storage import worklist
from storage.db import open_database
from storage.spool import Spool
from tests.dicom_factory import StudyUids, make_radiograph
from tests.peers import PostgresServer

LEASE_SECONDS = 600


def queue_studies(url: str, spool: Spool, count: int) -> None:
    """`count` one-image studies, spooled and QUEUED."""
    import io

    database = open_database(url)
    now = datetime.now(UTC)
    with database.sessions.begin() as session:
        for n in range(count):
            ds = make_radiograph(study=StudyUids(), seed=n % 7)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            entry = spool.write(ds.StudyInstanceUID, ds.SOPInstanceUID, [buffer.getvalue()])
            worklist.record_instance(session, worklist.InstanceRecord(
                sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                study_instance_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), modality="DX",
                body_part_examined="CHEST", view_position="PA",
                spool_path=entry.relative_path, size_bytes=entry.size_bytes,
                calling_ae_title=None), now - timedelta(minutes=1))
        worklist.queue_stable_studies(session, 0, now)
    database.dispose()


def work(url: str, spool_root: str, worker_id: str, ready, go, results) -> None:
    """One worker process: claim, read the image, complete, until nothing is queued."""
    database = open_database(url, migrate=False)
    database.ping()  # connected before the clock runs
    spool = Spool(Path(spool_root))
    claims: list[float] = []
    done = 0
    ready.put(worker_id)
    go.wait()
    while True:
        began = time.perf_counter()
        with database.sessions.begin() as session:
            claimed = worklist.claim_next(session, worker_id, LEASE_SECONDS, datetime.now(UTC))
        claims.append(time.perf_counter() - began)
        if claimed is None:
            break
        for instance in claimed.instances:
            pydicom.dcmread(spool.absolute(instance.spool_path)).pixel_array  # noqa: B018
        with database.sessions.begin() as session:
            worklist.complete(session, claimed.study_id, worker_id, datetime.now(UTC))
        done += 1
    results.put((done, time.time(), claims))
    database.dispose()


def measure(url: str, spool: Spool, studies: int, workers: int) -> tuple[float, list[float]]:
    """(studies per second, claim times in s) for `workers` processes on a fresh work list."""
    queue_studies(url, spool, studies)
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Queue(), context.Event(), context.Queue()
    processes = [context.Process(target=work, args=(url, str(spool.root), f"bench:{n}:{n}",
                                                    ready, go, results)) for n in range(workers)]
    for process in processes:
        process.start()
    for _ in processes:  # every process imported, connected and waiting
        ready.get(timeout=300)
    start = time.time()
    go.set()
    outcomes = [results.get(timeout=900) for _ in processes]
    for process in processes:
        process.join()
    finished = sum(done for done, _, _ in outcomes)
    assert finished == studies, f"{finished} of {studies} finished"
    elapsed = max(end for _, end, _ in outcomes) - start
    return studies / elapsed, [c for _, _, claims in outcomes for c in claims]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=400)
    parser.add_argument("--workers", default="1,2,4,8")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    print("model replaced by reading the image (pydicom, pixels decoded): these are the work "
          "list's own limits, not the node's speed with a model", flush=True)
    print(f"{args.studies} one-image studies per run; {os.cpu_count()} CPU cores", flush=True)
    server = PostgresServer(fsync=True)
    rows = []
    try:
        server.start()
        with tempfile.TemporaryDirectory(prefix="dicom-node-scale-") as tmp:
            for backend in ("postgresql", "sqlite"):
                base = None
                for workers in counts:
                    folder = Path(tmp) / f"{backend}-{workers}"
                    url = (server.url(server.create_database()) if backend == "postgresql"
                           else f"sqlite:///{folder / 'worklist.sqlite'}")
                    spool = Spool(folder / "spool")
                    rate, claims = measure(url, spool, args.studies, workers)
                    base = base or rate
                    quantiles = statistics.quantiles(claims, n=20)
                    rows.append((backend, workers, rate, rate / base,
                                 statistics.median(claims) * 1000, quantiles[-1] * 1000))
                    print(f"  {backend:<10} {workers} workers: {rate:7.1f} studies/s",
                          flush=True)
    finally:
        server.close()
    print()
    print(f"{'backend':<11}{'workers':>8}{'studies/s':>11}{'x 1 worker':>12}"
          f"{'claim ms p50':>14}{'p95':>8}")
    for backend, workers, rate, ratio, p50, p95 in rows:
        print(f"{backend:<11}{workers:>8}{rate:>11.1f}{ratio:>12.2f}{p50:>14.2f}{p95:>8.2f}")


if __name__ == "__main__":
    main()
