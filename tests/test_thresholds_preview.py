"""Threshold history, impact preview, saving without activating, and drift: from stored
results and a stored calibration set, through the service layer and the CLI's --json."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import ks_2samp
from typer.testing import CliRunner

from dicom_node import audit, drift, thresholds
from dicom_node.charts import histogram_svg
from dicom_node.cli import app
from dicom_node.settings import load_settings
from dicom_node.shipped import findings_file
from ml.catalogue import load_catalogue
from ml.metrics import wilson_interval
from storage import results, worklist
from storage.db import Database, open_database
from storage.profiles import ProfileError

CATALOGUE = load_catalogue(findings_file())
T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
CARDIO = [0.40, 0.48, 0.52, 0.55, 0.60]  # oldest first; the active threshold is 0.5


def add_study(database: Database, n: int, probability: float, *, version: int = 1,
              when: datetime | None = None, analysed: bool = True) -> str:
    uid = f"1.2.826.0.1.3680043.10.1001.{n}"
    when = when or T0 + timedelta(minutes=n)
    with database.sessions.begin() as session:
        study_id = worklist.record_instance(session, worklist.InstanceRecord(
            f"{uid}.1.1", f"{uid}.1", uid, "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1",
            "DX", "CHEST", "PA", f"{uid}/x.dcm", 10, "MOD"), when).study_id
        findings = (tuple(
            results.FindingRecord(label, p, 0.5, p >= 0.5)
            for label, p in (("Cardiomegaly", probability), ("Edema", 0.3))
        ) if analysed else ())
        results.add_result(session, results.NewResult(
            study_id=study_id, study_instance_uid=uid, result_key=f"{uid}-{version}",
            version=version, supersedes_id=None, worker_id="w", model_name="m",
            checkpoint_sha256s=("a" * 64,), catalogue_version="c", clinical_use=False,
            profile_version=1, aggregation="mean", sr_series_instance_uid=f"{uid}.8.{version}",
            sr_sop_instance_uid=f"{uid}.8.{version}.1",
            summary_series_instance_uid=f"{uid}.9.{version}",
            summary_sop_instance_uid=f"{uid}.9.{version}.1", findings=findings, images=(),
        ), when)
    return uid


@pytest.fixture
def studies(database: Database) -> list[str]:
    return [add_study(database, n, p) for n, p in enumerate(CARDIO, start=1)]


def test_preview_counts_the_studies_whose_decision_would_change(database, studies) -> None:
    higher = thresholds.preview(database, CATALOGUE, "cardiomegaly", 0.53)
    assert (higher.finding, higher.current_threshold, higher.studies_considered) == (
        "Cardiomegaly", 0.5, 5)
    assert (higher.changed, higher.to_present, higher.to_absent) == (1, 0, 1)
    assert higher.changed_studies == (studies[2],)  # the 0.52 study
    assert higher.sentence() == (
        "of the last 5 studies, 1 would change for Cardiomegaly (0 -> present, 1 -> absent)")
    lower = thresholds.preview(database, CATALOGUE, "Cardiomegaly", 0.45)
    assert (lower.to_present, lower.to_absent, lower.present_proposed) == (1, 0, 4)


def test_preview_reads_only_the_newest_result_of_the_last_n_analysed_studies(database,
                                                                             studies) -> None:
    # the 0.60 study was reprocessed: its newest result says 0.45
    add_study(database, 5, 0.45, version=2, when=T0 + timedelta(hours=1))
    add_study(database, 6, 0.0, when=T0 + timedelta(hours=2), analysed=False)  # not analysed
    shown = thresholds.preview(database, CATALOGUE, "Cardiomegaly", 0.46, last=2)
    assert shown.studies_considered == 2  # the skipped study is not one of them
    assert set(shown.changed_studies) == set()  # 0.45 and 0.55 keep their decisions
    shown = thresholds.preview(database, CATALOGUE, "Cardiomegaly", 0.44, last=2)
    assert shown.changed_studies == (studies[4],) and shown.to_present == 1


def test_preview_refuses_unknown_findings_and_unreachable_thresholds(database) -> None:
    with pytest.raises(ProfileError, match="unknown finding 'Cardio'"):
        thresholds.preview(database, CATALOGUE, "Cardio", 0.5)
    with pytest.raises(ProfileError, match="can never be crossed"):
        thresholds.preview(database, CATALOGUE, "Cardiomegaly", 0.95)


def record_calibration(database: Database, labels, scores) -> None:
    thresholds.record_calibration_set(
        database, author="ml", labels_name="labels.csv", labels_sha256="f" * 64,
        label_policy="uncertain=exclude, blank=negative", model_name="m",
        checkpoint_sha256s=["a" * 64], catalogue_version="c", profile_version=None,
        findings={"Cardiomegaly": (labels, scores)},
    )


def test_preview_shows_sensitivity_and_specificity_on_the_calibration_set(database,
                                                                          studies) -> None:
    assert "no calibration set stored" in thresholds.preview(
        database, CATALOGUE, "Cardiomegaly", 0.53).calibration_missing
    labels = [1] * 45 + [0] * 30
    scores = [0.6] * 40 + [0.51] * 5 + [0.45] * 25 + [0.52] * 5
    record_calibration(database, labels, scores)
    shown = thresholds.preview(database, CATALOGUE, "Cardiomegaly", 0.53)
    cal = shown.calibration
    assert cal.same_model is True and cal.interval_method == "Wilson score 95%"
    now, proposed = cal.current, cal.proposed
    assert (now.sensitivity.successes, now.sensitivity.total) == (45, 45)
    assert (now.specificity.successes, now.specificity.total) == (25, 30)
    assert (proposed.sensitivity.successes, proposed.specificity.successes) == (40, 30)
    assert (now.sensitivity.lower, now.sensitivity.upper) == pytest.approx(
        wilson_interval(45, 45))
    assert now.sensitivity.lower == pytest.approx(0.921, abs=1e-3)  # not a collapsed [1, 1]
    thresholds.record_calibration_set(
        database, author="ml", labels_name="other.csv", labels_sha256="e" * 64,
        label_policy="", model_name="other", checkpoint_sha256s=["b" * 64],
        catalogue_version="c", profile_version=None, findings={"Cardiomegaly": ([1], [0.6])})
    other = thresholds.preview(database, CATALOGUE, "Cardiomegaly", 0.53)
    assert other.calibration.same_model is False  # the newest set was scored by another model
    assert "other.csv" in other.calibration.source


def test_saving_needs_a_note_and_does_not_activate_both_audited(database) -> None:
    alice, bob = audit.Actor("alice", "console"), audit.Actor("bob", "console")
    with pytest.raises(ProfileError, match="needs a note"):
        thresholds.save_threshold(database, CATALOGUE, "Edema", 0.55, actor=alice, note=" ")
    created, changes = thresholds.save_threshold(
        database, CATALOGUE, "edema", 0.55, actor=alice, note="fewer false alarms")
    assert created.version == 2 and [(c.finding, c.before, c.after) for c in changes] == [
        ("Edema", 0.5, 0.55)]
    found = thresholds.history(database, CATALOGUE)
    assert found.active_version == 1
    assert [(v.version, v.author, v.note, v.method) for v in found.versions][-1] == (
        2, "alice", "fewer false alarms", "set")
    assert thresholds.activate(database, CATALOGUE, 2, actor=bob) == (1, True)
    assert thresholds.activate(database, CATALOGUE, 2, actor=bob) == (2, False)
    assert thresholds.history(database, CATALOGUE).events[-1].who == "bob"
    rows, total = audit.recent(database, action_prefix="thresholds.")
    assert total == 2  # the no-op activation is not a change
    assert [(r.actor, r.action, r.target) for r in rows] == [
        ("bob", "thresholds.activate", "v2"), ("alice", "thresholds.create", "v2")]
    assert rows[1].before == {"thresholds": {"Edema": 0.5}}
    assert rows[1].after == {"thresholds": {"Edema": 0.55}, "note": "fewer false alarms"}
    compared = thresholds.diff(database, CATALOGUE, 2, 1)  # any two, either order
    assert [(c.finding, c.before, c.after) for c in compared.changes] == [("Edema", 0.55, 0.5)]


def test_drift_histograms_and_ks_statistic(database, studies) -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.3, 0.7, 40).round(4).tolist()
    record_calibration(database, [1, 0] * 20, scores)
    report = drift.drift(database, CATALOGUE, last=10, bins=8, findings=["Cardiomegaly"])
    (found,) = report.findings
    assert report.studies == 5 and found.n_recent == 5 and found.n_calibration == 40
    assert len(found.edges) == 9 and sum(found.calibration_positive) == 20
    assert found.recent_mean == pytest.approx(np.mean(CARDIO))
    assert found.ks_statistic == pytest.approx(ks_2samp(CARDIO, scores).statistic)
    svg = histogram_svg("Cardiomegaly", found.edges, [("recent", found.recent)],
                        threshold=found.threshold)
    assert svg.lstrip().startswith("<?xml") and "NOT FOR CLINICAL USE" in svg


def test_cli_preview_and_drift_json(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n')
    database = open_database(load_settings(config).database_url)
    try:
        for n, p in enumerate(CARDIO, start=1):
            add_study(database, n, p)
    finally:
        database.dispose()
    runner = CliRunner()
    out = runner.invoke(app, ["thresholds", "preview", "Cardiomegaly", "0.53", "--config",
                              str(config), "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert (shown["changed"], shown["to_absent"], shown["studies_considered"]) == (1, 1, 5)
    assert shown["calibration"] is None and "calibrate" in shown["calibration_missing"]
    table = runner.invoke(app, ["thresholds", "preview", "Cardiomegaly", "0.53", "--config",
                                str(config)])
    assert "of the last 5 studies, 1 would change for Cardiomegaly" in table.output
    svgs = tmp_path / "svg"
    out = runner.invoke(app, ["thresholds", "drift", "--finding", "cardiomegaly", "--svg-dir",
                              str(svgs), "--config", str(config), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["findings"][0]["n_recent"] == 5
    assert (svgs / "Cardiomegaly.svg").read_text().count("<svg") == 1
    bad = runner.invoke(app, ["thresholds", "preview", "Cardiomegaly", "0.99", "--config",
                              str(config)])
    assert bad.exit_code == 2 and "can never be crossed" in bad.output
