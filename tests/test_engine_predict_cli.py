"""`dicom-node predict` on generated PNG and DICOM files with a tiny random checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from engine_samples import radiograph_pixels, textured_image, write_dx
from PIL import Image
from typer.testing import CliRunner

from dicom_node.cli import app
from ml.checkpoint import file_sha256
from ml.testing import write_random_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    Image.fromarray(textured_image(300, 240)).save(folder / "chest.png")
    write_dx(folder / "nested" / "frontal.dcm", radiograph_pixels())
    write_dx(folder / "nested" / "IM0001", radiograph_pixels(seed=3), Modality="CR")  # no suffix
    write_dx(folder / "nested" / "lateral.dcm", radiograph_pixels(), ViewPosition="LL")
    (folder / "nested" / "readme.txt").write_text("not an image, ignored in folders")
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=4)


def test_json_has_one_object_per_image_with_identity_and_skips(inputs, checkpoint):
    result = runner.invoke(app, ["predict", str(inputs), "--checkpoint", str(checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    objects = json.loads(result.stdout)
    by_name = {Path(o["path"]).name: o for o in objects}
    assert set(by_name) == {"chest.png", "frontal.dcm", "IM0001", "lateral.dcm"}
    frontal = by_name["frontal.dcm"]
    scores = frontal["probabilities"]
    assert len(scores) == 7 and "Edema" not in scores  # the shipped catalogue: six + No Finding
    assert all(0.119 <= p <= 0.881 for p in scores.values())
    others = [p for label, p in scores.items() if label != "No Finding"]
    assert scores["No Finding"] == pytest.approx(1 - max(others))
    assert "1 - the highest" in frontal["derived"]["No Finding"]
    assert frontal["model"]["checkpoint_sha256s"] == [file_sha256(checkpoint)]
    assert frontal["clinical_use"] is False and "NOT FOR CLINICAL USE" in frontal["note"]
    assert frontal["skipped_reason"] is None and frontal["flags"] == []
    lateral = by_name["lateral.dcm"]
    assert lateral["probabilities"] is None and "lateral view" in lateral["skipped_reason"]
    above = frontal["above_threshold"]["Pneumothorax"]
    assert above == (scores["Pneumothorax"] >= frontal["thresholds"]["Pneumothorax"])


def test_deflated_dicom_gives_the_findings_of_the_uncompressed_file(inputs, checkpoint, tmp_path):
    """Deflated Explicit VR Little Endian was refused as "truncated" (element positions in the
    inflated data were compared with the compressed file's size)."""
    plain = pydicom.dcmread(inputs / "nested" / "frontal.dcm")
    plain.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    plain.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    paths = [str(inputs / "nested" / "frontal.dcm"), str(tmp_path / "deflated.dcm")]
    result = runner.invoke(app, ["predict", *paths, "--checkpoint", str(checkpoint), "--json"])
    assert result.exit_code == 0, result.output
    frontal, deflated = json.loads(result.stdout)
    assert deflated["skipped_reason"] is None
    assert deflated["probabilities"] == pytest.approx(frontal["probabilities"], abs=1e-6)


def test_table_for_people_carries_the_banner(inputs, checkpoint):
    result = runner.invoke(
        app, ["predict", str(inputs / "chest.png"), "--checkpoint", str(checkpoint)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("NOT FOR CLINICAL USE") == 2
    assert "Pleural Effusion" in result.stdout and "threshold" in result.stdout


def test_conversion_option_changes_dicom_results_only(inputs, checkpoint):
    def run(conversion: str) -> dict:
        result = runner.invoke(app, ["predict", str(inputs), "--checkpoint", str(checkpoint),
                                     "--conversion", conversion, "--json"])
        assert result.exit_code == 0, result.output
        return {Path(o["path"]).name: o["probabilities"] for o in json.loads(result.stdout)}

    equalized, windowed = run("equalize"), run("voi")
    assert equalized["chest.png"] == windowed["chest.png"]
    first = np.array(list(equalized["frontal.dcm"].values()))
    assert np.abs(first - np.array(list(windowed["frontal.dcm"].values()))).max() > 0


def test_missing_configured_checkpoint_is_a_one_line_error(inputs, tmp_path):
    config = tmp_path / "node.toml"
    config.write_text(f'[model]\ncheckpoints = ["{tmp_path / "absent.pt"}"]\n')
    result = runner.invoke(app, ["predict", str(inputs), "--config", str(config)])
    assert result.exit_code == 2
    expected = f"dicom-node: error: checkpoint not found: {tmp_path / 'absent.pt'}"
    assert result.stderr.strip() == expected


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["predict", "/nonexistent/path.dcm"], "no such file or folder"),
        (["predict", "{empty}"], "no DICOM, PNG or JPEG files found"),
        (["predict", "{inputs}", "--conversion", "gamma"], "--conversion must be equalize or voi"),
        (["predict", "{inputs}", "--checkpoint", "{bad}"], "not a loadable PyTorch file"),
    ],
)
def test_bad_input_exits_with_a_reason(inputs, tmp_path, arguments, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.pt").write_text("nope")
    values = {"inputs": inputs, "empty": tmp_path / "empty", "bad": tmp_path / "bad.pt"}
    result = runner.invoke(app, [a.format(**values) for a in arguments])
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
