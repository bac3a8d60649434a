"""Labels CSV policy, the score cache, and the evaluation report with its CSV, JSON and figure."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from ml.evaluation import evaluate_scores, plot_roc, write_metrics_csv, write_metrics_json
from ml.labels import LabelPolicy, read_labels
from ml.score_cache import ScoreCache, model_key, score_paths_cached

FINDINGS = ("Atelectasis", "Edema", "Pneumothorax")


def write_labels(folder: Path, rows: list[dict[str, str]]) -> Path:
    for row in rows:
        (folder / row["Path"]).parent.mkdir(parents=True, exist_ok=True)
        (folder / row["Path"]).write_bytes(row["Path"].encode())
    path = folder / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["Path", "Sex", "Atelectasis", "Edema", "Mystery"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def chexpert_rows() -> list[dict[str, str]]:
    return [
        {"Path": "a/1.png", "Sex": "F", "Atelectasis": "1.0", "Edema": "-1.0", "Mystery": "x"},
        {"Path": "a/2.png", "Sex": "M", "Atelectasis": "0.0", "Edema": "", "Mystery": ""},
        {"Path": "a/3.png", "Sex": "M", "Atelectasis": "-1", "Edema": "1", "Mystery": ""},
    ]


def test_default_policy_excludes_uncertain_and_reads_blank_as_negative(tmp_path: Path) -> None:
    labelled = read_labels(write_labels(tmp_path, chexpert_rows()), FINDINGS)
    np.testing.assert_array_equal(labelled.labels[:, 0], [1, 0, np.nan])
    np.testing.assert_array_equal(labelled.labels[:, 1], [np.nan, 0, 1])
    assert np.isnan(labelled.labels[:, 2]).all()  # no Pneumothorax column at all
    assert labelled.missing_columns == ("Pneumothorax",)
    assert labelled.unknown_columns == ("Mystery",)  # Sex is CheXpert metadata, not unknown
    assert labelled.uncertain == {"Atelectasis": 1, "Edema": 1}
    assert labelled.paths[2] == (tmp_path / "a/3.png").resolve()


def test_other_policies(tmp_path: Path) -> None:
    csv_path = write_labels(tmp_path, chexpert_rows())
    ones = read_labels(csv_path, FINDINGS, LabelPolicy(uncertain="positive", blank="exclude"))
    np.testing.assert_array_equal(ones.labels[:, 1], [1, np.nan, 1])
    zeros = read_labels(csv_path, FINDINGS, LabelPolicy(uncertain="negative"))
    np.testing.assert_array_equal(zeros.labels[:, 0], [1, 0, 0])


def test_bad_cells_and_missing_images_are_named(tmp_path: Path) -> None:
    rows = chexpert_rows()
    rows[1]["Edema"] = "maybe"
    with pytest.raises(ValueError, match="row 3, column 'Edema'"):
        read_labels(write_labels(tmp_path, rows), FINDINGS)
    csv_path = write_labels(tmp_path, chexpert_rows())
    (tmp_path / "a/2.png").unlink()
    with pytest.raises(FileNotFoundError, match="1 image"):
        read_labels(csv_path, FINDINGS)


@dataclass
class FakeScore:
    probabilities: dict[str, float] | None
    skipped_reason: str | None


def test_each_image_content_is_scored_once_per_model(tmp_path: Path) -> None:
    images = []
    for i in range(5):
        images.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((8, 8), i * 40, np.uint8)).save(images[-1])
    shutil.copy(images[0], tmp_path / "copy.png")  # same content, another name
    images.append(tmp_path / "copy.png")
    scored: list[Path] = []

    def scorer(paths):
        scored.extend(paths)
        return [FakeScore({"Edema": 0.3 + 0.01 * len(scored)}, None) for _ in paths]

    cache = ScoreCache(tmp_path / "cache" / "scores.sqlite")
    key = model_key(["abc"], "cat1", "equalize")
    first = score_paths_cached(images, cache, key, lambda: scorer, batch_size=2)
    assert len(scored) == 5 and first[5].probabilities == first[0].probabilities
    again = score_paths_cached(images, cache, key, lambda: pytest.fail("model loaded"))
    assert [s.probabilities for s in again] == [s.probabilities for s in first]
    assert all(s.from_cache for s in again)
    score_paths_cached(images[:2], cache, model_key(["abc"], "cat2", "equalize"), lambda: scorer)
    assert len(scored) == 7  # another catalogue version scores afresh


def evaluation_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    n = 200
    labels = (rng.random((n, 3)) < 0.35).astype(float)
    scores = np.clip(0.45 + 0.1 * labels + rng.normal(0, 0.08, (n, 3)), 0.119, 0.881)
    labels[:, 2] = 0.0  # Pneumothorax: negatives only
    labels[:10, 0] = np.nan  # excluded by the label policy
    scores[-5:, :] = np.nan  # declined by the engine
    return labels, scores


def test_report_matches_sklearn_and_flags_single_class(tmp_path: Path) -> None:
    labels, scores = evaluation_inputs()
    report = evaluate_scores(FINDINGS, labels, scores, {"Atelectasis": 0.5}, resamples=200, seed=0)
    atelectasis, edema, pneumothorax = report.findings
    keep = ~np.isnan(labels[:, 0]) & ~np.isnan(scores[:, 0])
    assert atelectasis.auroc.estimate == pytest.approx(
        roc_auc_score(labels[keep, 0], scores[keep, 0])
    )
    assert atelectasis.n_excluded == 15
    assert (
        atelectasis.operating["sensitivity"].lower <= atelectasis.operating["sensitivity"].estimate
    )
    assert edema.operating is None  # no threshold given for it
    assert not pneumothorax.evaluable and pneumothorax.reason.startswith("only negative")
    assert report.mean_auroc.estimate == pytest.approx(
        np.mean([atelectasis.auroc.estimate, edema.auroc.estimate])
    )
    assert report.mean_auroc.lower < report.mean_auroc.estimate < report.mean_auroc.upper
    again = evaluate_scores(FINDINGS, labels, scores, {"Atelectasis": 0.5}, resamples=200, seed=0)
    assert again.as_dict() == report.as_dict()  # seeded: the same intervals every run
    other = evaluate_scores(FINDINGS, labels, scores, resamples=200, seed=1)
    assert other.findings[0].auroc.lower != atelectasis.auroc.lower


def test_csv_json_and_figure_files(tmp_path: Path) -> None:
    labels, scores = evaluation_inputs()
    report = evaluate_scores(
        FINDINGS, labels, scores, {"Atelectasis": 0.5, "Edema": 0.52}, resamples=100
    )
    write_metrics_csv(report, tmp_path / "metrics.csv")
    write_metrics_json(report, tmp_path / "metrics.json", {"model": "test"})
    plot_roc(report, tmp_path / "roc.png", title="test")
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["finding"] for r in rows] == [*FINDINGS, "mean"]
    assert float(rows[0]["auroc"]) == pytest.approx(report.findings[0].auroc.estimate, rel=1e-5)
    assert rows[2]["evaluable"] == "False" and rows[2]["auroc"] == ""
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["model"] == "test" and payload["mean_over"] == ["Atelectasis", "Edema"]
    assert payload["findings"][1]["operating_point"]["mcc"]["estimate"] is not None
    with Image.open(tmp_path / "roc.png") as figure:
        assert figure.format == "PNG" and figure.width > 500
