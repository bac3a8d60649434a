"""Admin commands on the real node: `studies retry` and `studies reprocess` via the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ml.testing import write_random_checkpoint
from storage import results
from storage.db import open_database
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import NodeProcess, run_cli, storescu

NO_WORKER = {"DICOM_NODE_WORKER__ENABLED": "false"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", seed=12)


def _node(node_factory, checkpoint: Path) -> NodeProcess:
    return node_factory(
        "admin",
        model={"checkpoints": [str(checkpoint)], "name": "tiny-test", "cpu_threads": 1},
        worker={"enabled": True, "poll_interval_seconds": 1},
    )


def _send(node: NodeProcess, directory: Path) -> StudyUids:
    study = StudyUids()
    path = write(make_radiograph(study=study, rows=256, columns=256), directory / "pa.dcm")
    result = storescu(node.port, [path], called_ae=node.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr
    return study


def _cli(node: NodeProcess, *args: str):
    return run_cli(*args, "--config", str(node.config_path))


def _results(node: NodeProcess, study_uid: str):
    database = open_database(f"sqlite:///{node.data_dir / 'worklist.sqlite'}", migrate=False)
    try:
        with database.read_only() as session:
            return results.results_for_study(session, study_uid)
    finally:
        database.dispose()


def test_reprocess_makes_a_new_result_that_supersedes_the_last(
    node_factory, checkpoint, tmp_path, storescp
) -> None:
    node = _node(node_factory, checkpoint)
    with node.config_path.open("a") as f:
        f.write(f'\n[[destinations]]\nname = "pacs"\nae_title = "{storescp.ae_title}"\n'
                f'host = "127.0.0.1"\nport = {storescp.port}\n')
    node.start()
    study = _send(node, tmp_path / "a")
    node.wait_for_state(study.study, "DONE")

    refused = _cli(node, "studies", "retry", study.study)
    assert refused.returncode == 1 and "reprocess takes" not in refused.stdout
    assert "DONE" in refused.stdout and "FAILED" in refused.stdout

    done = _cli(node, "studies", "reprocess", study.study)
    assert done.returncode == 0, done.stdout + done.stderr
    node.wait_for(lambda: len(_results(node, study.study)) == 2, "a second result")
    node.wait_for_state(study.study, "DONE")
    first, second = _results(node, study.study)
    assert second.version == 2 and second.supersedes_id == first.id
    assert second.sr_sop_instance_uid != first.sr_sop_instance_uid

    def delivered():
        shown = node.cli_json("studies", "show", study.study)["result"]
        states = {(d["kind"], d["state"]) for d in shown["deliveries"]}
        kinds = {kind for kind, _ in states}  # attention-map overlays may come too
        return shown if {"sr", "summary", "text"} <= kinds and {s for _, s in states} == {"SENT"} \
            else None

    shown = node.wait_for(delivered, "the new SR, summary and text report to be SENT")
    assert shown["version"] == 2 and shown["supersedes_version"] == 1
    assert shown["sr_sop_instance_uid"] == second.sr_sop_instance_uid
    assert shown["model"] == "tiny-test" and shown["profile_version"] == 1
    assert [f["label"] for f in shown["findings"]] == [f.label for f in second.findings]
    for finding in shown["findings"]:
        expected = "present" if finding["score"] >= finding["threshold"] else "absent"
        assert 0 <= finding["score"] <= 1 and finding["decision"] == expected
    assert [(i["scored"], i["reason"]) for i in shown["images"]] == [(True, None)]

    text = run_cli("studies", "show", study.study, "--config", str(node.config_path),
                   env={"COLUMNS": "80"})
    assert text.returncode == 0
    assert max(len(line) for line in text.stdout.splitlines()) <= 80
    for heading in ("Result", "Findings", "Images", "Deliveries", "supersedes 1", "SENT"):
        assert heading in text.stdout


def test_retry_all_failed_requeues_them_and_they_finish_once_the_cause_is_gone(
    node_factory, checkpoint, tmp_path
) -> None:
    node = _node(node_factory, checkpoint).start(env=NO_WORKER)
    studies = [_send(node, tmp_path / str(i)) for i in range(2)]
    for study in studies:
        node.wait_for_state(study.study, "QUEUED")
    node.stop()
    spool, aside = node.data_dir / "spool", tmp_path / "aside"
    shutil.move(spool, aside)  # the spool files are gone: a permanent failure, FAILED at once
    spool.mkdir()
    node.start()
    for study in studies:
        failed = node.wait_for_state(study.study, "FAILED")
        assert failed.attempts == 1
        assert failed.last_error.startswith(f"the spool file {study.study}/")  # UIDs, no PHI
        assert failed.last_error.endswith(".dcm is missing (deleted outside the node?)")

    shutil.rmtree(spool)
    shutil.move(aside, spool)
    retried = node.cli_json("studies", "retry", "--state", "FAILED", "--all")
    assert sorted(r["study_instance_uid"] for r in retried) == sorted(s.study for s in studies)
    assert {r["previous_state"] for r in retried} == {"FAILED"}
    for study in studies:
        assert node.wait_for_state(study.study, "DONE").attempts == 0


def test_retry_usage_errors_are_one_line(node_factory, checkpoint) -> None:
    node = _node(node_factory, checkpoint)
    node.config_path.parent.mkdir(parents=True, exist_ok=True)
    for args in (("studies", "retry"), ("studies", "retry", "1.2.3", "--state", "FAILED"),
                 ("studies", "retry", "--all", "--state", "BOGUS")):
        result = _cli(node, *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    missing = _cli(node, "studies", "retry", "1.2.3")
    assert missing.returncode == 1 and "no study with Study Instance UID" in missing.stdout
