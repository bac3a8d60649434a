"""`dicom-node thresholds calibrate` and `dicom-node evaluate` end to end on real images and a
real (tiny, random) checkpoint in the released layout. Labels are built from scores computed
independently with the engine, so the right thresholds and metrics are known in advance and
checked against scikit-learn."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import matthews_corrcoef, recall_score, roc_auc_score
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.shipped import findings_file
from ml.catalogue import load_catalogue
from ml.testing import write_random_checkpoint

N_IMAGES = 40
FLIPPED = (3, 11, 22, 30)  # Pneumothorax labels that disagree with the score ordering


def _images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:96, 0:80] / 96.0
    paths = []
    for i in range(N_IMAGES):
        angle = rng.uniform(0, np.pi)
        gradient = np.cos(angle) * xx + np.sin(angle) * yy
        pixels = 255 * np.clip(
            rng.uniform(0.2, 1.0) * gradient + rng.normal(0, 0.15, xx.shape), 0, 1
        )
        paths.append(folder / "images" / f"img{i:02d}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Images, a checkpoint, engine scores computed directly, and labels with a known structure."""
    from ml.engine import ZeroShotEngine

    root = tmp_path_factory.mktemp("calibrate")
    paths = _images(root)
    checkpoint = write_random_checkpoint(root / "tiny.pt", seed=3)
    catalogue = load_catalogue(findings_file())
    engine = ZeroShotEngine([checkpoint], catalogue, device="cpu")
    scored = engine.score_paths(paths, "equalize")
    scores = {f: np.array([s.probabilities[f] for s in scored]) for f in ("Pleural Effusion", "Pneumothorax")}
    effusion = (scores["Pleural Effusion"] >= np.median(scores["Pleural Effusion"])).astype(int)
    pneumothorax = (scores["Pneumothorax"] >= np.quantile(scores["Pneumothorax"], 0.6)).astype(int)
    pneumothorax[list(FLIPPED)] ^= 1
    cardiomegaly = [str(v) for v in pneumothorax]
    cardiomegaly[0], cardiomegaly[1] = "-1.0", ""  # uncertain (excluded), blank (negative)
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Path", "Sex", "Pleural Effusion", "Pneumothorax", "Cardiomegaly", "Support Devices"])
        for i, path in enumerate(paths):
            writer.writerow(
                [
                    path.relative_to(root).as_posix(),
                    "F",
                    f"{effusion[i]}.0",
                    pneumothorax[i],
                    cardiomegaly[i],
                    "0",
                ]
            )
    return {
        "root": root,
        "checkpoint": checkpoint,
        "scores": scores,
        "effusion": effusion,
        "pneumothorax": pneumothorax,
    }


@pytest.fixture
def config(workspace: dict, tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\ndata_dir = "{tmp_path / "data"}"\n'
        f'[model]\ncheckpoints = ["{workspace["checkpoint"]}"]\ndevice = "cpu"\n'
    )
    return path


def run(config: Path, *args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == expect, result.output
    return result.output


def run_json(config: Path, *args: str) -> dict:
    return json.loads(run(config, *args, "--json"))


def by_finding(report: dict) -> dict[str, dict]:
    return {f["finding"]: f for f in report["findings"]}


def best_mcc_threshold(y: np.ndarray, s: np.ndarray) -> float:
    candidates = np.unique(s)
    values = [matthews_corrcoef(y, (s >= t).astype(int)) for t in candidates]
    return float(candidates[int(np.argmax(values))])


def test_calibrate_mcc_matches_sklearn_and_saves_an_inactive_version(workspace, config) -> None:
    labels = str(workspace["root"] / "labels.csv")
    out = run_json(
        config, "thresholds", "calibrate", labels, "--method", "mcc", "--resamples", "200"
    )
    findings = by_finding(out["report"])
    scores = workspace["scores"]

    # Pleural Effusion separates perfectly: the lowest positive score. Sensitivity is 1 on these images,
    # but the interval says what new images will show: a threshold chosen at the edge of the
    # positives it saw misses some it did not see, so the lower bound is below 1
    assert out["thresholds"]["Pleural Effusion"] == scores["Pleural Effusion"][workspace["effusion"] == 1].min()
    assert findings["Pleural Effusion"]["operating_point"]["mcc"]["estimate"] == 1.0
    sensitivity = findings["Pleural Effusion"]["operating_point"]["sensitivity"]
    assert sensitivity["estimate"] == 1.0 and sensitivity["upper"] == 1.0
    assert sensitivity["lower"] < 1.0

    y, s = workspace["pneumothorax"], scores["Pneumothorax"]
    t = best_mcc_threshold(y, s)
    assert out["thresholds"]["Pneumothorax"] == t
    at = findings["Pneumothorax"]["operating_point"]
    assert at["mcc"]["estimate"] == pytest.approx(matthews_corrcoef(y, s >= t))
    assert at["sensitivity"]["estimate"] == pytest.approx(recall_score(y, s >= t))
    assert at["sensitivity"]["lower"] <= at["sensitivity"]["estimate"] <= at["sensitivity"]["upper"]

    # policy: the uncertain image is left out, the blank one counts as negative
    assert findings["Cardiomegaly"]["n_excluded"] == 1
    assert findings["Cardiomegaly"]["n_positive"] + findings["Cardiomegaly"]["n_negative"] == 39
    assert not findings["Support Devices"]["evaluable"] and out["thresholds"]["Support Devices"] == 0.5

    assert out["version"] == 2 and out["activated"] is False
    assert run_json(config, "thresholds", "show")["version"] == 1
    saved = run_json(config, "thresholds", "show", "2")
    assert saved["method"] == "calibrate:mcc" and saved["thresholds"]["Pneumothorax"] == t
    assert saved["provenance"]["checkpoints"][0]["sha256"]
    assert saved["provenance"]["label_policy"] == "uncertain=exclude, blank=negative"


def test_calibrate_scores_once_and_activates_on_request(workspace, config) -> None:
    labels = str(workspace["root"] / "labels.csv")
    first = run_json(
        config, "thresholds", "calibrate", labels, "--method", "youden", "--resamples", "50"
    )
    assert first["activated"] is False
    second = run_json(
        config,
        "thresholds",
        "calibrate",
        labels,
        "--method",
        "sensitivity:0.9",
        "--activate",
        "--resamples",
        "50",
        "--note",
        "screening",
    )
    assert second["version"] == 3 and second["activated"] is True
    assert run_json(config, "thresholds", "show")["version"] == 3
    saved = run_json(config, "thresholds", "show", "3")
    assert saved["provenance"]["images_from_cache"] == N_IMAGES  # nothing scored twice
    sensitivity = by_finding(second["report"])["Pneumothorax"]["operating_point"]["sensitivity"]
    assert sensitivity["estimate"] >= 0.9

    table = run(config, "thresholds", "calibrate", labels, "--method", "fixed", "--resamples", "20")
    assert "no new version" in table
    fixed = run_json(
        config, "thresholds", "calibrate", labels, "--method", "fixed", "--resamples", "20"
    )
    assert fixed["version"] is None
    assert all(saved["thresholds"][f] == t for f, t in fixed["thresholds"].items())
    assert run_json(config, "thresholds", "history")["events"][-1]["version"] == 3

    # the measured labels and scores are kept: a later preview shows the same operating point
    preview = run_json(config, "thresholds", "preview", "Pneumothorax", "0.6")
    measured = by_finding(fixed["report"])["Pneumothorax"]
    current = preview["calibration"]["current"]
    assert "labels.csv" in preview["calibration"]["source"]
    assert current["threshold"] == fixed["thresholds"]["Pneumothorax"]
    assert current["sensitivity"]["total"] == measured["n_positive"]
    assert current["sensitivity"]["estimate"] == pytest.approx(
        measured["operating_point"]["sensitivity"]["estimate"])


def test_evaluate_writes_auroc_with_intervals_figure_and_csv(workspace, config, tmp_path) -> None:
    run(config, "thresholds", "set", "Pleural Effusion", "0.52", "--author", "carol")
    out_dir = tmp_path / "eval"
    result = run_json(
        config,
        "evaluate",
        str(workspace["root"] / "labels.csv"),
        "--out",
        str(out_dir),
        "--resamples",
        "200",
        "--seed",
        "4",
    )
    findings = by_finding(result)
    for name, y in (("Pleural Effusion", workspace["effusion"]), ("Pneumothorax", workspace["pneumothorax"])):
        auroc = findings[name]["auroc"]
        assert auroc["estimate"] == pytest.approx(roc_auc_score(y, workspace["scores"][name]))
        assert auroc["lower"] <= auroc["estimate"] <= auroc["upper"]
    assert findings["Pleural Effusion"]["threshold"] == 0.52 and result["profile_version"] == 2
    assert findings["Support Devices"]["reason"] == "only negative labels (40)"
    assert result["bootstrap"] == {"resamples": 200, "seed": 4, "confidence": 0.95}
    rows = list(csv.DictReader((out_dir / "metrics.csv").open()))
    assert rows[-1]["finding"] == "mean"
    assert json.loads((out_dir / "metrics.json").read_text())["mean_auroc"] == result["mean_auroc"]
    with Image.open(out_dir / "roc.png") as figure:
        assert figure.format == "PNG"


def test_bad_inputs_are_one_line_errors(workspace, config, tmp_path) -> None:
    labels = str(workspace["root"] / "labels.csv")
    assert "unknown threshold method" in run(
        config, "thresholds", "calibrate", labels, "--method", "f1", expect=2
    )
    missing = tmp_path / "missing.csv"
    missing.write_text("Path,Pleural Effusion\nnowhere.png,1\n")
    assert "not found" in run(config, "evaluate", str(missing), expect=2)
    assert "uncertain policy" in run(config, "evaluate", labels, "--uncertain", "maybe", expect=2)
