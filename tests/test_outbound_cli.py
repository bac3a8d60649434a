"""`dicom-node outbound list|retry` and `dicom-node worker --once`, as an operator uses them."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from dicom_node.cli import app
from ml.testing import write_random_checkpoint
from storage import outbound, results
from storage.db import open_database
from storage.spool import Spool
from storage.worklist import InstanceRecord, queue_stable_studies, record_instance
from tests.dicom_factory import StudyUids, make_radiograph

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
runner = CliRunner()


@pytest.fixture(autouse=True)
def _restore_logging():
    """`dicom-node worker` installs its own root log handler; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n[logging]\nlevel = "WARNING"\n'
        f'[model]\ncheckpoints = ["{write_random_checkpoint(tmp_path / "m.pt")}"]\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 9\n'
    )
    return path


def _database(config):
    return open_database(f"sqlite:///{config.parent / 'data' / 'worklist.sqlite'}")


def _queue_deliveries(config) -> list[int]:
    """One result with an SR delivery that is DEAD and a summary delivery that was SENT."""
    database = _database(config)
    with database.sessions.begin() as session:
        study_id = record_instance(session, InstanceRecord(
            "1.2.3.1", "1.2.3.0", "1.2.3", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1",
            "DX", "CHEST", "PA", "1.2.3/1.2.3.1.dcm", 1, "MOD"), T0).study_id
        result_id = results.add_result(session, results.NewResult(
            study_id=study_id, study_instance_uid="1.2.3", result_key="k", version=1,
            supersedes_id=None, worker_id="w", model_name="m", checkpoint_sha256s=("a",),
            catalogue_version="c", clinical_use=False, profile_version=1, aggregation="mean",
            sr_series_instance_uid="2.25.1", sr_sop_instance_uid="2.25.11",
            summary_series_instance_uid="2.25.2", summary_sop_instance_uid="2.25.21",
            findings=(), images=()), T0)
        outbound.enqueue(session, result_id, [
            outbound.NewDelivery("pacs", "sr", "1.2.3", "2.25.11", "1.2.840.10008.5.1.4.1.1.88.33",
                                 "1.2.3/2.25.11.dcm"),
            outbound.NewDelivery("pacs", "summary", "1.2.3", "2.25.21", "1.2.840.10008.5.1.4.1.1.7",
                                 "1.2.3/2.25.21.dcm"),
        ], T0)
        sr, summary = outbound.claim_due(session, "pacs", T0, 60)
        outbound.mark_failed(session, sr.id, "association with PACS@127.0.0.1:9 failed", None, T0)
        outbound.mark_sent(session, summary.id, T0)
    database.dispose()
    return [sr.id, summary.id]


def test_list_shows_state_attempts_and_error(config):
    _queue_deliveries(config)
    result = runner.invoke(app, ["outbound", "list", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["kind"]: r for r in json.loads(result.stdout)}
    assert (rows["sr"]["state"], rows["sr"]["attempts"]) == ("DEAD", 1)
    assert "association" in rows["sr"]["last_error"]
    assert rows["summary"]["state"] == "SENT"

    dead = runner.invoke(app, ["outbound", "list", "--state", "dead", "--config", str(config),
                               "--json"])
    assert [r["kind"] for r in json.loads(dead.stdout)] == ["sr"]
    table = runner.invoke(app, ["outbound", "list", "--config", str(config)])
    assert "DEAD" in table.stdout and "pacs" in table.stdout


def test_retry_revives_dead_and_refuses_what_was_acknowledged(config):
    dead_id, sent_id = _queue_deliveries(config)
    refused = runner.invoke(app, ["outbound", "retry", str(sent_id), "--config", str(config)])
    assert refused.exit_code == 2
    assert "not sent twice" in refused.output
    retried = runner.invoke(app, ["outbound", "retry", "--all-dead", "--config", str(config),
                                  "--json"])
    assert json.loads(retried.stdout) == {"retried": [dead_id]}
    listed = runner.invoke(app, ["outbound", "list", "--state", "PENDING", "--config",
                                 str(config), "--json"])
    (row,) = json.loads(listed.stdout)
    assert (row["id"], row["attempts"]) == (dead_id, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["outbound", "retry"], "name delivery ids or use --all-dead"),
     (["outbound", "list", "--state", "LOST"], "unknown state 'LOST'"),
     (["outbound", "retry", "99"], "no outbound delivery with id 99")],
)
def test_bad_input_is_one_line_and_exit_2(config, args, message):
    result = runner.invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_worker_once_processes_the_queue_and_reports(config):
    data = config.parent / "data"
    spool = Spool(data / "spool")
    database = _database(config)
    study = StudyUids()
    ds = make_radiograph(study=study)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    entry = spool.write(study.study, ds.SOPInstanceUID, [buffer.getvalue()])
    with database.sessions.begin() as session:
        record_instance(session, InstanceRecord(
            ds.SOPInstanceUID, ds.SeriesInstanceUID, study.study, ds.SOPClassUID,
            "1.2.840.10008.1.2.1", "DX", "CHEST", "PA", entry.relative_path, entry.size_bytes,
            "MOD"), T0)
        queue_stable_studies(session, 1, datetime.now(UTC))
    database.dispose()

    result = runner.invoke(app, ["worker", "--once", "--no-send", "--config", str(config),
                                 "--json"])

    assert result.exit_code == 0, result.output
    (processed,) = json.loads(result.stdout)
    assert (processed["study_instance_uid"], processed["state"], processed["version"]) == (
        study.study, "DONE", 1)
    listed = runner.invoke(app, ["outbound", "list", "--config", str(config), "--json"])
    queued = {(r["kind"], r["state"]) for r in json.loads(listed.stdout)}
    # with attention-map overlays for any finding called present
    assert queued - {("heatmap", "PENDING")} == {
        ("sr", "PENDING"), ("summary", "PENDING"), ("text", "PENDING")}
