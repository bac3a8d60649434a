"""CLI start-up time: `dicom-node --help`, `status` and `studies list` beside `python -c pass`.

Each command runs N times (default 7) as a fresh process against a throwaway data directory
whose work list already exists (as on a running site: read-only commands never migrate); prints the
median wall time of each and its ratio to a bare interpreter start on the same machine, and
the median CPU time (user + system) of the process: on a shared machine the wall time also
counts waiting for a core, the CPU time does not.

    python bench/startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.db import open_database
from tests.peers import dicom_node_command, toml_text

TARGET_SECONDS = 0.5


def median_seconds(argv: list[str], runs: int) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of `runs` fresh runs of `argv`
    (each must exit 0)."""
    walls, cpus = [], []
    for _ in range(runs):
        before = _children_cpu()
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, check=False)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - before)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")
    return statistics.median(walls), statistics.median(cpus)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "node.toml"
        config.write_text(toml_text({"node": {"data_dir": str(Path(tmp) / "data")}}))
        node = dicom_node_command()
        open_database(f"sqlite:///{Path(tmp) / 'data' / 'worklist.sqlite'}").dispose()
        print(f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} CPUs: wall "
              "times count waiting for a core, CPU times do not")
        baseline, baseline_cpu = median_seconds([sys.executable, "-c", "pass"], args.runs)
        print(f"{'python -c pass':<28} {baseline:6.3f} s  (cpu {baseline_cpu:.3f} s)")
        for name, extra in (("--help", ["--help"]), ("status", ["status"]),
                            ("studies list", ["studies", "list"])):
            with_config = extra if name == "--help" else [*extra, "--config", str(config)]
            seconds, cpu = median_seconds([*node, *with_config], args.runs)
            verdict = "ok" if seconds < TARGET_SECONDS else f"over {TARGET_SECONDS} s"
            print(f"dicom-node {name:<17} {seconds:6.3f} s  {seconds / baseline:5.1f}x python"
                  f"  (cpu {cpu:.3f} s, {cpu / baseline_cpu:.1f}x; {verdict}; median of "
                  f"{args.runs})")


if __name__ == "__main__":
    main()
