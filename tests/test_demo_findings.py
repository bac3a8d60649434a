"""An honest demo (issue 14 item 4): the demo model's card lists the six findings it learned,
the shipped catalogue enables only those (plus the derived No Finding), and the node refuses to
enable any other for that checkpoint unless forced: `serve` at start-up, the threshold commands
before a profile is put to use."""

from __future__ import annotations

import logging
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.sr.coding import Code
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.logs import _EVENT_ATTR
from dicom_node.reporting.content import FindingOutcome
from dicom_node.reporting.sr import build_findings_sr
from dicom_node.reporting.uids import ResultKey, report_uids
from dicom_node.settings import load_settings
from dicom_node.shipped import demo_checkpoint, findings_file
from dicom_node.trained_findings import UntrainedFindingError, check_settings
from ml.catalogue import load_catalogue
from ml.model_card import read_card, untrained_findings
from ml.synth.spec import SYNTH_FINDINGS
from tests.peers import run_cli, toml_text
from tests.report_samples import WHEN, algorithm, dciodvfy, dx_image, findings


def _catalogue_enabling(tmp_path: Path, label: str) -> Path:
    """The shipped findings file with `label` switched on."""
    text = findings_file().read_text()
    start = text.index(f'label = "{label}"')
    end = text.index("enabled = false", start)
    path = tmp_path / "findings.toml"
    path.write_text(text[:end] + "enabled = true" + text[end + len("enabled = false"):])
    return path


def _config(tmp_path: Path, findings: Path, **model) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    values = {"node": {"host": "127.0.0.1", "port": port, "data_dir": str(tmp_path / "data")},
              "worker": {"enabled": False},
              "model": {"findings_file": str(findings), "device": "cpu", **model}}
    path = tmp_path / "node.toml"
    path.write_text(toml_text(values))
    return path


def test_demo_card_lists_the_six_synthetic_findings():
    card = read_card(demo_checkpoint())
    assert card is not None and set(card.findings) == set(SYNTH_FINDINGS)


def test_shipped_configuration_passes_the_check():
    assert check_settings(load_settings(environ={})) == []


def test_a_card_without_findings_makes_no_claim(tmp_path):
    checkpoint = tmp_path / "other.pt"
    checkpoint.write_bytes(b"")
    assert untrained_findings(checkpoint, ["Edema"]) == ([], None)  # no card at all
    (tmp_path / "other.card.toml").write_text('name = "other"\nclinical_use = false\n')
    missing, card = untrained_findings(checkpoint, ["Edema"])
    assert missing == [] and card is not None


def test_serve_refuses_an_untrained_finding_in_one_line(tmp_path):
    config = _config(tmp_path, _catalogue_enabling(tmp_path, "Edema"))
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    for words in ("'Edema'", "demo-synthetic-v2.pt", "not trained", "allow_untrained_findings"):
        assert words in line


def test_forcing_by_config_logs_what_was_forced(tmp_path, caplog):
    settings = load_settings(_config(tmp_path, _catalogue_enabling(tmp_path, "Edema")),
                             environ={})
    with pytest.raises(UntrainedFindingError, match="'Edema'"):
        check_settings(settings)
    forced = replace(settings, model=replace(settings.model, allow_untrained_findings=True))
    with caplog.at_level(logging.WARNING):
        (item,) = check_settings(forced)
    assert item.findings == ("Edema",) and item.checkpoint.name == "demo-synthetic-v2.pt"
    events = [getattr(r, _EVENT_ATTR, None) for r in caplog.records]
    assert "untrained_findings_forced" in events


def test_activating_a_profile_is_refused_unless_forced(tmp_path):
    config = str(_config(tmp_path, _catalogue_enabling(tmp_path, "Pneumonia")))
    runner = CliRunner()
    refused = runner.invoke(app, ["thresholds", "activate", "1", "--config", config])
    assert refused.exit_code == 2
    assert "'Pneumonia'" in refused.output and "--force" in refused.output
    forced = runner.invoke(app, ["thresholds", "activate", "1", "--force", "--config", config])
    assert forced.exit_code == 0, forced.output
    assert "forced: finding 'Pneumonia'" in forced.output


def test_shipped_catalogue_notes_why_the_others_are_disabled():
    catalogue = load_catalogue(findings_file())
    disabled = [f for f in catalogue.findings if not f.enabled]
    assert {f.label for f in disabled}.isdisjoint(SYNTH_FINDINGS)
    assert all("not trained" in (f.note or "") for f in disabled)


def test_no_finding_is_reported_as_derived_in_the_sr(tmp_path):
    source = dx_image("1.2.826.0.1.3680043.8.498.2")
    outcomes = [*findings()[:2], FindingOutcome(
        label="No Finding", code=Code("408573005", "SCT", "Imaging result normal"), site=None,
        probability=0.29, threshold=0.5, present=False,
        derivation=load_catalogue(findings_file()).by_label("No Finding").derivation)]
    key = ResultKey.of(study_instance_uid=source.StudyInstanceUID, model_name="demo",
                       checkpoint_sha256s=["a1" * 32], profile="v1",
                       source_sop_instance_uids=[source.SOPInstanceUID])
    uids = report_uids(key, version=1, labels=[f.label for f in outcomes])
    sr = build_findings_sr(evidence=[source], findings=outcomes, algorithm=algorithm(),
                           uids=uids.sr, tracking_uids=dict(uids.tracking), node_uid="1.2.3.4",
                           content_datetime=WHEN)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path)[0] == []
    dump = subprocess.run(["/usr/bin/dsrdump", "+Pl", str(path)], capture_output=True, text=True,
                          check=True).stdout
    groups = dump.split("Tracking Identifier")
    no_finding = next(g for g in groups if '"No Finding"' in g)
    assert "score derived: 1 - the highest score among the enabled findings" in no_finding
    others = [g for g in groups[1:] if '"No Finding"' not in g]
    assert others and all("derived" not in g for g in others)
