"""The prompt workbench on a real work list, spool, worker and engine (tiny seeded
checkpoints): embeddings stored with results, a new prompt pair scored from them exactly as the
engine would score it, AUROC on a study-label CSV, and a finding added as a catalogue revision
through the CLI."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dicom_node import audit, workbench
from dicom_node.cli import app
from dicom_node.settings import load_settings
from dicom_node.worker import Worker, load_model, outbox_for
from ml.catalogue import parse_catalogue
from ml.dicom_image import dataset_to_uint8
from ml.engine import ZeroShotEngine
from ml.metrics import auroc
from ml.testing import TINY
from storage import results, worklist
from storage.db import open_database
from storage.spool import Spool
from tests.dicom_factory import StudyUids, make_radiograph
from tests.engine_samples import sensitive_checkpoint

PAIR = workbench.PromptPair("Airspace opacity", "airspace opacity", "clear lungs")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return [sensitive_checkpoint(folder / f"m{seed}.pt", seed=seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def node(tmp_path_factory, checkpoints):
    """Five analysed studies (the first with two frontal images), one ensemble [m1, m2, m1]."""
    root = tmp_path_factory.mktemp("node")
    config = root / "node.toml"
    members = [checkpoints[0], checkpoints[1], checkpoints[0]]  # m1 votes twice
    config.write_text(
        f'[node]\ndata_dir = "{root / "data"}"\n[model]\nname = "tiny-test"\n'
        f"checkpoints = {json.dumps([str(p) for p in members])}\n"
    )
    settings = load_settings(config)
    database = open_database(settings.database_url)
    studies = [[make_radiograph(view="PA", study=StudyUids(), seed=10 + i)] for i in range(5)]
    first = studies[0][0]
    studies[0].append(make_radiograph(view="AP", study=StudyUids(first.StudyInstanceUID,
                                      first.SeriesInstanceUID), seed=99, instance_number=2))
    _process(settings, database, [ds for study in studies for ds in study])
    yield config, settings, database, studies
    database.dispose()


def _process(settings, database, datasets) -> None:
    spool, clock = Spool(settings.spool_path), [datetime(2026, 11, 1, 8, tzinfo=UTC)]
    spool.prepare()
    outbox_for(settings).prepare()
    worker = Worker(settings=settings, database=database, spool=spool,
                    outbox=outbox_for(settings), clock=lambda: clock[0])
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        entry = spool.write(ds.StudyInstanceUID, ds.SOPInstanceUID, [buffer.getvalue()])
        with database.sessions.begin() as session:
            worklist.record_instance(session, worklist.InstanceRecord(
                ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.SOPClassUID,
                ds.file_meta.TransferSyntaxUID, ds.Modality, "CHEST", ds.ViewPosition,
                entry.relative_path, entry.size_bytes, "MOD"), clock[0])
    clock[0] += timedelta(seconds=60)
    with database.sessions.begin() as session:
        worklist.queue_stable_studies(session, 1, clock[0])
    while (outcome := worker.run_once()) is not None:
        assert outcome.state.value == "DONE", outcome
        clock[0] += timedelta(seconds=1)


def test_each_scored_image_keeps_one_unit_embedding_per_checkpoint(node) -> None:
    database = node[2]
    with database.read_only() as session:
        stored = results.study_embeddings(session, limit=10)
    assert len(stored) == 5 and [len(s.images) for s in stored].count(2) == 1
    for study in stored:
        for image in study.images:
            assert len(image) == 2  # m1 once (it is the same file twice), m2
            for vector in image.values():
                values = np.frombuffer(vector, dtype="<f4")
                assert values.shape == (TINY.embed_dim,)
                assert np.linalg.norm(values) == pytest.approx(1, abs=1e-5)


def test_prompt_pair_scores_equal_the_engine_with_that_finding(node, checkpoints) -> None:
    _, settings, database, studies = node
    trial = workbench.try_prompt(database, settings, PAIR, last=10)
    assert len(trial.scores) == 5 and trial.left_out == {}
    catalogue = parse_catalogue({"finding": [{
        "label": PAIR.label, "positive_prompt": PAIR.positive, "negative_prompt": PAIR.negative,
        "code": {"value": "X", "scheme": "99DCMNODE", "meaning": "x"}, "default_threshold": 0.5,
    }]})
    engine = ZeroShotEngine([checkpoints[0], checkpoints[1], checkpoints[0]], catalogue,
                            device="cpu")
    expected = {
        study[0].StudyInstanceUID:
            float(engine.score_uint8([dataset_to_uint8(ds) for ds in study]).mean(axis=0)[0])
        for study in studies
    }
    got = dict(trial.scores)
    assert got.keys() == expected.keys()
    assert max(abs(got[u] - expected[u]) for u in got) <= 1e-5
    assert np.ptp(list(got.values())) > 1e-4  # the studies do score differently
    assert sum(trial.counts) == 5 and trial.at_or_above == sum(v >= 0.5 for v in got.values())


def test_studies_scored_by_other_checkpoints_are_left_out(node, checkpoints) -> None:
    _, settings, database, _ = node
    from dataclasses import replace
    other = replace(settings, model=replace(settings.model, checkpoints=[str(checkpoints[2])]))
    trial = workbench.try_prompt(database, other, PAIR, last=3)
    assert trial.scores == () and trial.left_out == {workbench.OTHER_MODEL: 3}


def test_auroc_on_a_study_label_csv_with_bootstrap_interval(node, tmp_path) -> None:
    _, settings, database, _ = node
    scores = dict(workbench.try_prompt(database, settings, PAIR, last=10).scores)
    ranked = sorted(scores, key=scores.get)
    labels = tmp_path / "labels.csv"
    rows = [f"{uid},{int(i % 2 == 0)}" for i, uid in enumerate(ranked)]
    labels.write_text("Study_Instance_UID,Label\n" + "\n".join(rows)
                      + "\n1.2.3.4,1\n1.2.3.5,\n")
    trial = workbench.try_prompt(database, settings, PAIR, labels_csv=labels, resamples=200)
    result = trial.labelled
    y = np.array([int(i % 2 == 0) for i in range(5)])
    assert result.estimate == pytest.approx(auroc(y, np.array([scores[u] for u in ranked])))
    assert (result.n_positive, result.n_negative, result.not_found) == (3, 2, 1)
    assert result.lower <= result.estimate <= result.upper and result.resamples == 200
    assert "bootstrap" in result.method

    labels.write_text("study_instance_uid,label\n1.2.3,1\n1.2.4,yes\n")
    with pytest.raises(ValueError, match="labels.csv line 3: label must be 1 or 0, got 'yes'"):
        workbench.try_prompt(database, settings, PAIR, labels_csv=labels)
    labels.write_text("uid,finding\n1.2.3,1\n")
    with pytest.raises(ValueError, match="needs the columns study_instance_uid and label"):
        workbench.try_prompt(database, settings, PAIR, labels_csv=labels)


def cli(config: Path, *args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == expect, result.output
    return result.output


def test_cli_try_add_enable_and_the_worker_scores_the_new_finding(node) -> None:
    config, settings, _, _ = node
    tried = json.loads(cli(config, "findings", "try", PAIR.label, "--positive", PAIR.positive,
                           "--negative", PAIR.negative, "--json"))
    assert tried["studies_scored"] == 5 and tried["clinical_use"] is False
    add = ["findings", "add", PAIR.label, "--positive", PAIR.positive, "--negative",
           PAIR.negative, "--private-code", "AIRSPACE", "--threshold", "0.52"]
    assert "--note is required" in cli(config, *add, expect=2)
    added = json.loads(cli(config, *add, "--note", "site asked for it", "--author", "rad1",
                           "--json"))
    assert (added["revision"], added["action"], added["author"]) == (1, "add", "rad1")
    assert added["entry"]["enabled"] is False and added["entry"]["code"] == {
        "value": "AIRSPACE", "scheme": "99DCMNODE", "meaning": PAIR.label}
    assert added["provenance"]["tried_on_studies"] == 5
    listed = json.loads(cli(config, "findings", "list", "--json"))
    mine = [f for f in listed["findings"] if f["label"] == PAIR.label]
    assert mine == [{**mine[0], "enabled": False, "source": "added", "default_threshold": 0.52}]
    assert added["catalogue_version"] == listed["catalogue_version"]
    assert "already has a finding" in cli(config, *add, "--note", "again", expect=2)
    assert PAIR.label not in load_model(settings).engine.labels  # disabled: not scored

    cli(config, "findings", "enable", PAIR.label.lower(), "--note", "validated", "--json")
    assert load_model(settings).engine.labels[-1] == PAIR.label  # the worker's next start
    history = json.loads(cli(config, "findings", "history", "--json"))["revisions"]
    assert [(r["revision"], r["action"], r["note"]) for r in history] == [
        (1, "add", "site asked for it"), (2, "enable", "validated")]
    assert "was not added from the workbench" in cli(
        config, "findings", "disable", "Edema", "--note", "x", expect=2)
    shown = json.loads(cli(config, "thresholds", "show", "--json"))
    assert shown["version"] == 1  # the thresholds profile is untouched by a catalogue change
    rows, _ = audit.recent(node[2], action_prefix="catalogue.")
    assert [(r.action, r.target, r.origin) for r in rows] == [
        ("catalogue.enable", PAIR.label, "cli"), ("catalogue.add", PAIR.label, "cli")]
    assert rows[1].actor.endswith("(as rad1)") and rows[1].after["entry"]["enabled"] is False


def test_embeddings_go_with_their_study_when_the_work_list_row_is_purged(database) -> None:
    from sqlalchemy import delete, func, select

    from storage.models import ImageEmbedding, Study

    uid = "1.2.826.0.1.3680043.10.1001.77"
    now = datetime(2026, 11, 1, tzinfo=UTC)
    vector = np.ones(4, dtype="<f4").tobytes()
    with database.sessions.begin() as session:
        study_id = worklist.record_instance(session, worklist.InstanceRecord(
            f"{uid}.1.1", f"{uid}.1", uid, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1",
            "DX", "CHEST", "PA", f"{uid}/x.dcm", 10, "MOD"), now).study_id
        results.add_result(session, results.NewResult(
            study_id=study_id, study_instance_uid=uid, result_key=uid, version=1,
            supersedes_id=None, worker_id="w", model_name="m", checkpoint_sha256s=("a" * 64,),
            catalogue_version="c", clinical_use=False, profile_version=1, aggregation="mean",
            sr_series_instance_uid=f"{uid}.8", sr_sop_instance_uid=f"{uid}.8.1",
            summary_series_instance_uid=f"{uid}.9", summary_sop_instance_uid=f"{uid}.9.1",
            findings=(results.FindingRecord("Edema", 0.5, 0.5, True),),
            images=(results.ImageRecord(f"{uid}.1.1", True, None, {"Edema": 0.5}, (),
                                        {"a" * 64: vector}),),
        ), now)
    count = select(func.count()).select_from(ImageEmbedding)
    with database.sessions.begin() as session:
        assert session.scalar(count) == 1
        session.execute(delete(Study).where(Study.id == study_id))  # as retention does
        assert session.scalar(count) == 0
