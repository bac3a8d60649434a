"""Work that survives crashes without waiting out leases: the real node, killed and restarted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ml.testing import write_random_checkpoint
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import NodeProcess, storescu

IMAGES = 40  # enough that scoring takes a while, so the kill lands mid-study


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", seed=11)


def _worker_node(node_factory, name: str, checkpoint: Path, **sections) -> NodeProcess:
    return node_factory(
        name,
        model={"checkpoints": [str(checkpoint)], "name": "tiny-test", "batch_size": 1,
               "cpu_threads": 1},
        worker={"enabled": True, "poll_interval_seconds": 1},
        **sections,
    )


def _send_study(node: NodeProcess, directory: Path, count: int, size: int = 256) -> StudyUids:
    study = StudyUids()
    paths = [
        write(make_radiograph(study=study, instance_number=i + 1, rows=size, columns=size,
                              seed=i), directory / f"{i}.dcm")
        for i in range(count)
    ]
    result = storescu(node.port, paths, called_ae=node.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr
    return study


def test_kill_9_during_inference_is_done_within_a_minute_of_the_restart(
    node_factory, checkpoint, tmp_path
) -> None:
    node = _worker_node(node_factory, "kill-mid-study", checkpoint).start()
    study = _send_study(node, tmp_path / "in", IMAGES, size=512)
    node.wait_for(lambda: node.events("study_claimed"), "the worker to claim the study")
    assert node.kill_hard() < 0
    held = node.study(study.study)
    assert held.state == "PROCESSING" and held.lease_until is not None  # 600 s lease left

    restarted = time.monotonic()
    node.start()
    done = node.wait_for_state(study.study, "DONE", timeout=60)
    assert time.monotonic() - restarted < 60
    assert done.attempts == 1  # the killed attempt counts, like an expired lease
    released = node.events("lease_released")
    assert [e["study_instance_uid"] for e in released] == [study.study]
    assert node.events("lease_expired") == []


def test_gone_holders_reads_worker_and_sender_ids() -> None:
    from dicom_node.sender import gone_holders

    dead = 2**22 + 12345  # above any pid_max this test runs under: no such process
    holders = [f"h:{dead}:7f3a", f"h:{dead}", "h:1:7f3a", f"other:{dead}:7f3a", "h:99:x",
               "odd"]
    assert gone_holders(holders, "h", own_pid=99) == [f"h:{dead}:7f3a", f"h:{dead}", "h:99:x"]
