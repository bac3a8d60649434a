"""Work that survives crashes without waiting out leases: the real node, killed and restarted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ml.testing import write_random_checkpoint
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import NodeProcess, storescu, toml_text

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
    from dicom_node.processes import gone_holders

    dead = 2**22 + 12345  # above any pid_max this test runs under: no such process
    holders = [f"h:{dead}:7f3a", f"h:{dead}", "h:1:7f3a", f"other:{dead}:7f3a", "h:99:x",
               "odd"]
    assert gone_holders(holders, "h", own_pid=99) == [f"h:{dead}:7f3a", f"h:{dead}", "h:99:x"]
    # a running process looking again: its own ids are its other threads' work in progress
    assert gone_holders(holders, "h", own_pid=99, starting=False) == [f"h:{dead}:7f3a",
                                                                       f"h:{dead}"]


def test_transient_failure_waits_out_a_doubling_backoff_before_the_next_claim(database) -> None:
    from datetime import UTC, datetime, timedelta

    from storage import worklist
    from storage.worklist import InstanceRecord

    t0 = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)
    study = StudyUids()
    record = InstanceRecord(
        sop_instance_uid=study.study + ".1", series_instance_uid=study.series,
        study_instance_uid=study.study, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="DX", body_part_examined="CHEST",
        view_position="PA", spool_path="x.dcm", size_bytes=1, calling_ae_title="MOD",
    )
    with database.sessions.begin() as session:
        worklist.record_instance(session, record, t0)
        worklist.queue_stable_studies(session, 0, t0)
    now = t0
    for attempt, delay in ((1, 10), (2, 20), (3, 40), (4, 60)):
        with database.sessions.begin() as session:
            claimed = worklist.claim_next(session, "w", 600, now)
            assert claimed is not None and claimed.attempts == attempt - 1
            state = worklist.fail(session, claimed.study_id, "w", "OSError: disk full", now,
                                  max_attempts=8, retry_delay_seconds=10,
                                  retry_max_delay_seconds=60)
        assert state == "QUEUED"
        with database.sessions.begin() as session:
            early = now + timedelta(seconds=delay - 1)
            assert worklist.claim_next(session, "w", 600, early) is None
        now += timedelta(seconds=delay)
    with database.read_only() as session:
        assert worklist.study_detail(session, study.study)[0].not_before == now


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 16 MiB tmpfs (a real ENOSPC when full); skipped where mounting is not permitted."""
    import subprocess

    mounted: list[Path] = []

    def mount(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)],
                                capture_output=True, check=False)
        if result.returncode != 0:
            pytest.skip("cannot mount a tmpfs here (needs root): no real ENOSPC available")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Write into `directory` until its file system answers ENOSPC."""
    import os

    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return filler


def test_disk_full_during_a_study_is_retried_with_backoff_and_done_once_space_returns(
    node_factory, checkpoint, tmp_path, tiny_filesystem
) -> None:
    node = _worker_node(node_factory, "disk-full", checkpoint,
                        worklist={"stable_seconds": 0.5, "assembly_interval_seconds": 0.25,
                                  "retry_delay_seconds": 1, "retry_max_delay_seconds": 2})
    filler = _fill(tiny_filesystem(node.data_dir / "outbox"))
    node.start()
    study = _send_study(node, tmp_path / "in", 1)
    node.wait_for(lambda: len(node.events("study_failed")) >= 3, "three failed attempts")
    failures = node.events("study_failed")
    assert all(f["state"] == "QUEUED" and f["permanent"] is False for f in failures)
    assert "No space left on device" in failures[0]["error"]
    assert "\n" not in failures[0]["error"]  # the reason in one line; the traceback beside it
    assert [f["retry_in_seconds"] for f in failures[:3]] == [1, 2, 2]
    stamps = [time.mktime(time.strptime(f["ts"][:19], "%Y-%m-%dT%H:%M:%S")) for f in failures]
    assert stamps[2] - stamps[0] >= 2  # waited between tries, not three in a second

    filler.unlink()  # space returns; no admin action
    done = node.wait_for_state(study.study, "DONE", timeout=30)
    assert done.attempts >= 3 and done.last_error is None
    assert not list((node.data_dir / "outbox").rglob("*.tmp"))


def test_sigterm_during_inference_gives_the_lease_back_after_the_grace_period(
    node_factory, checkpoint, tmp_path
) -> None:
    grace = 0.5  # well below the time the study takes (80 images, batch 1)
    node = _worker_node(node_factory, "sigterm-mid-study", checkpoint)
    node.sections["worker"]["shutdown_grace_seconds"] = grace
    node.config_path.write_text(toml_text(node.sections))
    node.start()
    study = _send_study(node, tmp_path / "in", 2 * IMAGES, size=512)
    node.wait_for(lambda: node.events("study_claimed"), "the worker to claim the study")
    asked = time.monotonic()
    assert node.stop() == 0
    assert time.monotonic() - asked < grace + 8
    given_back = node.study(study.study)
    assert (given_back.state, given_back.attempts) == ("QUEUED", 0)  # no attempt counted
    assert [e["study_instance_uid"] for e in node.events("lease_given_back")] == [study.study]

    node.start()
    assert node.wait_for_state(study.study, "DONE", timeout=60).attempts == 0
    assert node.events("lease_released") == []  # nothing was left to sweep


def test_a_worker_stopped_while_its_model_loads_claims_nothing(database, tmp_path) -> None:
    import threading
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from dicom_node.settings import Settings
    from dicom_node.worker import Worker
    from storage import worklist
    from storage.spool import Spool
    from storage.worklist import InstanceRecord

    now = datetime.now(UTC)
    study = StudyUids()
    record = InstanceRecord(
        sop_instance_uid=study.study + ".1", series_instance_uid=study.series,
        study_instance_uid=study.study, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1", modality="DX", body_part_examined="CHEST",
        view_position="PA", spool_path="x.dcm", size_bytes=1, calling_ae_title="MOD",
    )
    with database.sessions.begin() as session:
        worklist.record_instance(session, record, now)
        worklist.queue_stable_studies(session, 0, now)
    loading, release = threading.Event(), threading.Event()

    def slow_loader(_settings):  # a model that is still loading when SIGTERM arrives
        loading.set()
        release.wait(timeout=30)
        identity = SimpleNamespace(checkpoint_sha256s=["0" * 64])
        return SimpleNamespace(engine=SimpleNamespace(identity=identity), catalogue=None)

    worker = Worker(settings=Settings(), database=database, spool=Spool(tmp_path / "spool"),
                    outbox=Spool(tmp_path / "outbox"), clock=lambda: datetime.now(UTC),
                    model_loader=slow_loader)
    worker.start()
    assert loading.wait(timeout=10)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    time.sleep(0.2)  # shutdown has begun; now the model finishes loading
    release.set()
    stopper.join(timeout=30)
    assert worker.model_status()[0] == "loaded"
    with database.read_only() as session:
        left = worklist.study_detail(session, study.study)[0]
    assert (left.state, left.attempts) == ("QUEUED", 0)  # never claimed


def test_orphan_spool_files_are_recorded_or_removed_at_start_up(
    node_factory, checkpoint, tmp_path
) -> None:
    import shutil

    import pydicom

    node = _worker_node(node_factory, "reconcile", checkpoint)
    spool = node.data_dir / "spool"
    study = StudyUids()
    source = write(make_radiograph(study=study, rows=256, columns=256), tmp_path / "a.dcm")
    ds = pydicom.dcmread(source)
    valid = spool / study.study / f"{ds.SOPInstanceUID}.dcm"  # renamed, never committed
    valid.parent.mkdir(parents=True)
    shutil.copy(source, valid)
    corrupt = spool / "1.2.3" / "1.2.3.4.dcm"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"not dicom" * 50)
    temporary = spool / study.study / f".{ds.SOPInstanceUID}.dcm.{2**22 + 7}.7f3a.tmp"
    temporary.write_bytes(b"half a file")

    node.start()
    done = node.wait_for_state(study.study, "DONE", timeout=60)
    assert done.instance_count == 1
    assert not corrupt.exists() and not temporary.exists() and valid.exists()
    [line] = node.events("spool_reconciled")
    assert (line["recorded"], line["removed_invalid"], line["removed_temporary"]) == (1, 1, 1)
