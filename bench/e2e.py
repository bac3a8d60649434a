"""End-to-end latency: last C-STORE of a one-image study -> its SR in Orthanc, against the
engine's bare predict time for the same image, measured in one run on this machine.

    python bench/e2e.py [--studies 5] [--stable-seconds 2] [--checkpoint PATH | --architecture vit-b-32]

Starts Orthanc and `dicom-node serve` (worker on, Orthanc as the destination) on loopback, sends
one warm-up study (model loading is not latency), then N one-image studies one at a time. For
each: t0 = storescu returned (the node acknowledged the C-STORE), t1 = the node logged that
Orthanc accepted the SR (`delivery_sent`, kind sr; its arrival in Orthanc is confirmed by
polling every 0.1 s, lightly, as the poller shares the 2 cores with the node); latency = t1 - t0
- stable_seconds, the part the node controls.
The bare predict time is, in this process with the model loaded once (same checkpoint, same
torch thread count as the node, warmed up), reading the very file the node just scored to 8
bits plus `ZeroShotEngine.score_uint8` (the node's own read + score steps), timed once the node
has finished that study (neither the node nor the Orthanc polling runs beside it; best of 3,
median of N).
The node's own read + score seconds (its `study_reported` log event) are printed beside it: the
two should agree, else the comparison is not to be trusted. Prints the latency, the bare
predict and their ratio; the target is 1.5 or less (issue 16). It also times `dicom-node
predict IMAGE` as a whole (a cold process: interpreter, imports, model load, score) and prints
that ratio too. Uses the configured model when its checkpoints exist, else a random checkpoint
with the demo architecture (same compute, meaningless scores);
`--architecture vit-b-32` uses a random checkpoint of the released CheXzero size instead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch

from dicom_node.settings import load_settings
from dicom_node.worker import load_model
from ml.dicom_image import read_image_uint8
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import NodeProcess, OrthancPeer, storescu

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
STORED_AT: dict[str, float] = {}  # study UID -> wall clock when storescu returned
POLL_SECONDS = 0.1  # latency comes from the node's log, so polling can be slow and light
STAGES = ("study_queued", "study_claimed", "sr_queued", "study_reported", "delivery_sent")


def checkpoint_path(requested: str | None, architecture: str, workdir: Path) -> Path:
    if requested:
        return Path(requested).resolve()
    if architecture == "vit-b-32":
        from ml.architecture import ClipArchitecture
        from ml.testing import write_random_checkpoint

        print("using a random checkpoint of the released CheXzero size (ViT-B/32)")
        return write_random_checkpoint(workdir / "random-vit-b-32.pt", ClipArchitecture(), seed=1)
    settings = load_settings(environ={})
    configured = [settings.resolve(p) for p in settings.model.checkpoints]
    if configured and all(p.is_file() for p in configured):
        return configured[0]
    from ml.testing import write_random_checkpoint
    from ml.training.config import DEMO_ARCHITECTURE

    print("configured model not found: using a random checkpoint with the demo architecture")
    return write_random_checkpoint(workdir / "random-demo-arch.pt", DEMO_ARCHITECTURE, seed=1)


def sr_arrived(orthanc: OrthancPeer, study_uid: str) -> bool:
    import json
    import urllib.request

    request = urllib.request.Request(
        orthanc.url + "/tools/lookup", data=study_uid.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        found = json.loads(response.read())
    for item in found:
        if item.get("Type") == "Study":
            for instance in orthanc.get(f"/studies/{item['ID']}/instances"):
                tags = orthanc.get(f"/instances/{instance['ID']}/simplified-tags")
                if tags.get("SOPClassUID") == SR_CLASS:
                    return True
    return False


def one_study(node: NodeProcess, orthanc: OrthancPeer, workdir: Path, seed: int) -> tuple[float, Path]:
    """Seconds from storescu's return to the node's log saying Orthanc accepted the SR (confirmed
    in Orthanc); returns once the node has finished the study (overlays included)."""
    study = StudyUids()
    path = write(make_radiograph(view="PA", study=study, rows=2048, columns=1680, seed=seed),
                 workdir / f"study-{seed}.dcm")
    result = storescu(node.port, [path], called_ae=node.ae_title)
    stored = STORED_AT[study.study] = time.time()
    if result.returncode != 0:
        raise RuntimeError(f"storescu failed: {result.stdout}{result.stderr}")
    _wait(lambda: sr_arrived(orthanc, study.study), node, "no SR in Orthanc")
    sent = _wait(lambda: _logged(node, "delivery_sent", study.study, kind="sr"), node,
                 "no delivery_sent for the SR in the node's log")
    _wait(lambda: _logged(node, "study_reported", study.study), node, "no study_reported")
    time.sleep(0.5)  # the last deliveries (overlays, text report) after study_reported
    return sent - stored, path


def _logged(node: NodeProcess, event: str, study_uid: str, **match: str) -> float | None:
    """Wall-clock time of the first `event` of the study in the node's log, else None."""
    from datetime import datetime

    times = [datetime.fromisoformat(e["ts"]).timestamp() for e in node.events(event)
             if e.get("study_instance_uid") == study_uid
             and all(e.get(k) == v for k, v in match.items())]
    return min(times) if times else None


def _wait(found: Callable[[], Any], node: NodeProcess, failure: str) -> Any:
    """Poll `found` every POLL_SECONDS (gently: the node shares the machine) until truthy."""
    deadline = time.perf_counter() + 300
    while time.perf_counter() < deadline:
        value = found()
        if value:
            return value
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"{failure} after 300 s; node log:\n{node.log()[-3000:]}")


def breakdown(node: NodeProcess) -> float | None:
    """Median seconds from the C-STORE to each stage, from the node's own log events; returns
    the median of the node's own read + score seconds per study."""
    from datetime import datetime

    offsets: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for study_uid, stored in list(STORED_AT.items())[1:]:  # not the warm-up
        for stage in STAGES:
            times = [datetime.fromisoformat(e["ts"]).timestamp() for e in node.events(stage)
                     if e.get("study_instance_uid") == study_uid]
            if times:
                offsets[stage].append(min(times) - stored)
    print("stages after the C-STORE (median s): " + ", ".join(
        f"{stage} {statistics.median(v):.3f}" for stage, v in offsets.items() if v))
    measured = set(list(STORED_AT)[1:])
    worker: dict[str, list[float]] = {}
    for event in node.events("study_reported"):
        if event.get("study_instance_uid") in measured:
            for part, value in (event.get("seconds") or {}).items():
                worker.setdefault(part, []).append(value)
    print("worker parts (median s): " + ", ".join(
        f"{part} {statistics.median(v):.3f}" for part, v in worker.items()))
    if "read" in worker and "score" in worker:
        own = [r + s for r, s in zip(worker["read"], worker["score"], strict=True)]
        return statistics.median(own)
    return None


class BarePredict:
    """The engine in this process, model loaded once: decode the file to 8 bits and score it."""

    def __init__(self, checkpoint: Path) -> None:
        self.settings = load_settings(
            environ={}, overrides={"model": {"checkpoints": [str(checkpoint)]}})
        self.engine = load_model(self.settings).engine
        self.threads = torch.get_num_threads()  # cpu_threads 0: torch's default, as in the node

    def seconds(self, image: Path, runs: int = 3) -> float:
        """Best of `runs`: other load on a shared machine only ever slows a run down, so the
        best is the model's own cost (which makes the ratio, if anything, pessimistic)."""
        timings = []
        for _ in range(runs):
            start = time.perf_counter()
            self.engine.score_uint8(
                [read_image_uint8(image, self.settings.model.dicom_conversion)])
            timings.append(time.perf_counter() - start)
        return min(timings)


def predict_cli_seconds(checkpoint: Path, image: Path, runs: int = 2) -> float:
    """Wall time of `dicom-node predict IMAGE` (process start, model load, score)."""
    from tests.peers import run_cli

    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        result = run_cli("predict", str(image), "--checkpoint", str(checkpoint), "--json",
                         timeout=600)
        timings.append(time.perf_counter() - start)
        if result.returncode != 0:
            raise RuntimeError(f"dicom-node predict failed: {result.stderr}")
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--stable-seconds", type=float, default=2.0)
    parser.add_argument("--assembly-interval-seconds", type=float, default=None,
                        help="default: the shipped configuration's")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--heat-maps-per-study", type=int, default=None,
                        help="default: the shipped configuration's; 0 shows what the "
                        "attention maps made after the SR cost its delivery")
    parser.add_argument("--architecture", choices=("demo", "vit-b-32"), default="demo",
                        help="without --checkpoint: the configured model (else a random one of "
                        "the demo architecture), or a random ViT-B/32 (the released size)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        checkpoint = checkpoint_path(args.checkpoint, args.architecture, workdir)
        orthanc = OrthancPeer(workdir / "orthanc").start()
        worklist = {"stable_seconds": args.stable_seconds}
        if args.assembly_interval_seconds is not None:
            worklist["assembly_interval_seconds"] = args.assembly_interval_seconds
        else:
            worklist["assembly_interval_seconds"] = load_settings(
                environ={}).worklist.assembly_interval_seconds
        worker: dict[str, object] = {"enabled": True}
        if args.heat_maps_per_study is not None:
            worker["heat_maps_per_study"] = args.heat_maps_per_study
        node = NodeProcess.create(
            workdir / "node", worklist=worklist, worker=worker,
            model={"checkpoints": [str(checkpoint)]}, logging={"level": "INFO"},
        )
        with node.config_path.open("a") as f:
            f.write(f'\n[[destinations]]\nname = "pacs"\nae_title = "{orthanc.ae_title}"\n'
                    f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
        bare = BarePredict(checkpoint)
        try:
            node.start()
            _, image = one_study(node, orthanc, workdir, seed=0)  # warm-up: model load etc.
            bare.seconds(image)  # warm-up
            measured, predicted = [], []
            for i in range(args.studies):
                seconds, image = one_study(node, orthanc, workdir, seed=i + 1)
                measured.append(seconds - args.stable_seconds)
                predicted.append(bare.seconds(image))  # the same file, the node idle
                print(f"study {i + 1}: SR sent to Orthanc {seconds:.3f} s after the C-STORE "
                      f"({measured[-1]:.3f} s beyond stable_seconds); bare predict "
                      f"{predicted[-1]:.3f} s", flush=True)
            node_own = breakdown(node)
        finally:
            node.stop()
            orthanc.stop()
        latency = statistics.median(measured)
        bare_seconds = statistics.median(predicted)
        print(f"checkpoint: {checkpoint.name}; image 2048x1680 DX; stable_seconds "
              f"{args.stable_seconds}; assembly_interval_seconds "
              f"{worklist['assembly_interval_seconds']}")
        print(f"end-to-end beyond stable_seconds (median of {len(measured)}): {latency:.3f} s")
        print(f"bare predict (decode + score, warm engine, {bare.threads} torch threads, "
              f"best of 3, median): {bare_seconds:.3f} s")
        if node_own is not None:
            print(f"the node's own read + score (its log, median):  {node_own:.3f} s "
                  f"({node_own / bare_seconds:.2f}x the bare predict)")
        cli = predict_cli_seconds(checkpoint, image)
        print(f"`dicom-node predict IMAGE` wall time (cold process, median of 2): {cli:.3f} s")
        print(f"ratio vs warm engine:            {latency / bare_seconds:.2f} (target <= 1.5)")
        print(f"ratio vs `dicom-node predict`:   {latency / cli:.2f}")


if __name__ == "__main__":
    main()
