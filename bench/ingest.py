"""Ingest throughput: dcmtk storescu -> dcmtk storescp vs storescu -> our node, one run.

Generates realistic-size digital radiographs (default 12 x 2500x3000, 16-bit, about 15 MB each),
then sends the same files over loopback to dcmtk `storescp` and to `dicom-node serve` (durable:
fsync'd spool file + committed work-list row before each Success), alternating for a few rounds
with a fresh data directory each time. Prints images/s for both and the ratio ours/storescp.

    python bench/ingest.py [--count 12] [--rounds 3] [--rows 3000] [--columns 2500]

dcmtk caps PDUs at 128 KiB: storescp gets `-pdu 131072` and storescu sends PDUs of that size to
both receivers (our node announces node.max_pdu_bytes, 1 MiB by default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import numpy as np

from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import NodeProcess, StoreSCP, store_responses, storescu

DCMTK_MAX_PDU = 131072


def make_files(directory: Path, count: int, rows: int, columns: int) -> list[Path]:
    """`count` DX files of one study; one base image, per-file noise (distinct pixel data)."""
    base = make_radiograph(rows=rows, columns=columns, bits_stored=14, study=StudyUids())
    study = StudyUids(study=base.StudyInstanceUID, series=base.SeriesInstanceUID)
    pixels = np.frombuffer(base.PixelData, dtype=np.uint16).reshape(rows, columns)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(count):
        ds = make_radiograph(
            rows=8,
            columns=8,
            bits_stored=14,
            study=study,
            instance_number=i + 1,
            view="PA" if i % 2 == 0 else "LL",
        )
        noisy = pixels.astype(np.int32) + rng.integers(-8, 9, size=pixels.shape)
        ds.Rows, ds.Columns = rows, columns
        ds.PixelData = np.clip(noisy, 0, (1 << 14) - 1).astype(np.uint16).tobytes()
        paths.append(write(ds, directory / f"dx-{i + 1:03d}.dcm"))
    return paths


def send(port: int, files: list[Path], called_ae: str) -> float:
    """Seconds for storescu to send all files over one association; all must succeed."""
    started = time.perf_counter()
    result = storescu(
        port, files, called_ae=called_ae, options=["-pdu", str(DCMTK_MAX_PDU)], timeout=600
    )
    elapsed = time.perf_counter() - started
    statuses = store_responses(result.stdout + result.stderr)
    if statuses != ["Success"] * len(files):
        raise SystemExit(f"storescu to {called_ae} failed: {statuses}\n{result.stderr[-2000:]}")
    return elapsed


def run_storescp(workdir: Path, files: list[Path], round_no: int) -> float:
    peer = StoreSCP(workdir / f"storescp-{round_no}", max_pdu=DCMTK_MAX_PDU).start()
    try:
        return send(peer.port, files, peer.ae_title)
    finally:
        peer.stop()


def run_node(workdir: Path, files: list[Path], round_no: int) -> float:
    node = NodeProcess.create(
        workdir / f"node-{round_no}",
        logging={"level": "WARNING"},
        worklist={"stable_seconds": 3600},
    ).start()
    try:
        elapsed = send(node.port, files, node.ae_title)
        spooled = list((node.data_dir / "spool").rglob("*.dcm"))
        if len(spooled) != len(files) or sum(p.stat().st_size for p in spooled) < sum(
            p.stat().st_size for p in files
        ):
            raise SystemExit(f"node spooled {len(spooled)} files for {len(files)} sent")
        return elapsed
    finally:
        node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--columns", type=int, default=2500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        workdir = Path(tmp)
        files = make_files(workdir / "files", args.count, args.rows, args.columns)
        size_mb = sum(p.stat().st_size for p in files) / len(files) / 1e6
        print(f"{len(files)} files, {args.rows}x{args.columns} 16-bit, {size_mb:.1f} MB each")
        ours, theirs = [], []
        for round_no in range(args.rounds):
            theirs.append(len(files) / run_storescp(workdir, files, round_no))
            ours.append(len(files) / run_node(workdir, files, round_no))
            print(
                f"round {round_no + 1}: storescp {theirs[-1]:.2f} images/s, "
                f"dicom-node {ours[-1]:.2f} images/s"
            )
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(f"storescp   {theirs_median:.2f} images/s (median of {args.rounds})")
    print(
        f"dicom-node {ours_median:.2f} images/s (median of {args.rounds}; fsync + commit "
        "before each Success)"
    )
    print(f"ratio dicom-node/storescp = {ours_median / theirs_median:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
