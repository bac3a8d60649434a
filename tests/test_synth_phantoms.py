"""Synthetic studies: the same seed gives the same bytes, and what the labels say is what the
image shows (each finding changes the pixels where a reader would look for it)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from ml.synth.dataset import SynthOptions, generate
from ml.synth.render import render_frontal
from ml.synth.reports import CHEXPERT_COLUMNS, chexpert_labels, write_report
from ml.synth.spec import PRESENT, SYNTH_FINDINGS, Sided, draw_study

H, W = 256, 224


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    for name, seed in (("a", 11), ("b", 11), ("c", 12)):
        generate(SynthOptions(tmp_path / name, 3, seed, "png", height=128))
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() - set() or a != c
    assert a["reports.csv"] != c["reports.csv"]


def test_a_study_does_not_depend_on_how_many_are_written(tmp_path):
    generate(SynthOptions(tmp_path / "few", 2, 5, "png", height=96))
    generate(SynthOptions(tmp_path / "many", 4, 5, "png", height=96))
    few, many = _tree(tmp_path / "few"), _tree(tmp_path / "many")
    shared = [k for k in few if k.endswith(".png")]
    assert shared and all(few[k] == many[k] for k in shared)


def test_labels_csv_has_chexpert_layout_and_matches_the_reports(tmp_path):
    written = generate(SynthOptions(tmp_path, 40, 3, "png", height=64))
    with (tmp_path / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == CHEXPERT_COLUMNS
    by_path = {r["Path"]: r for r in rows}
    for study in written:
        row = by_path[study.images[0].relpath]
        assert (tmp_path / row["Path"]).is_file()
        for name in SYNTH_FINDINGS:
            state = study.spec.state(name)
            cell = row[name]
            if state == PRESENT:
                assert cell == "1.0"
            elif state is not None:
                assert cell == "-1.0"
            else:
                assert cell in ("0.0", "")
    assert {r["No Finding"] for r in rows} <= {"1.0", ""}


def test_every_finding_occurs_present_and_absent_with_matching_report_words():
    specs = [draw_study(9, i) for i in range(200)]
    words = {"Cardiomegaly": "cardiomegaly", "Pleural Effusion": "pleural effusion",
             "Pneumothorax": "pneumothorax", "Consolidation": "consolidation",
             "Support Devices": "support devices"}
    for name, word in words.items():
        present = [s for s in specs if s.state(name) == PRESENT]
        absent = [s for s in specs if s.state(name) is None]
        assert len(present) > 30 and len(absent) > 80
        assert all(word in write_report(s).lower() for s in present)
        negated = [s for s in absent if f"no {word}" in write_report(s).lower()]
        assert negated, f"no report says 'no {word}'"
        labels = [chexpert_labels(s, write_report(s))[name] for s in absent]
        assert "1.0" not in labels and "-1.0" not in labels


def test_hedged_findings_are_uncertain_labels():
    specs = [draw_study(4, i) for i in range(400)]
    hedged = [s for s in specs if s.state("Pleural Effusion") not in (None, PRESENT)]
    assert hedged
    for spec in hedged:
        report = write_report(spec).lower()
        assert any(w in report for w in ("possible", "cannot exclude", "may reflect"))
        assert chexpert_labels(spec, report)["Pleural Effusion"] == "-1.0"


def _without(spec, **changes):
    return dataclasses.replace(spec, **changes)


def _base():
    spec = draw_study(21, 0)
    return _without(spec, cardiomegaly=None, ctr=0.42, effusion=None, pneumothorax=None,
                    consolidation=None, devices=())


def _mean(image, rows, cols):
    return float(image[int(rows[0] * H):int(rows[1] * H), int(cols[0] * W):int(cols[1] * W)].mean())


def test_pneumothorax_darkens_the_lateral_hemithorax():
    base = _base()
    ptx = _without(base, pneumothorax=Sided(PRESENT, "right", 0.5))
    a, b = render_frontal(base, H, W), render_frontal(ptx, H, W)
    # patient's right is the image's left
    assert _mean(b, (0.3, 0.6), (0.08, 0.22)) < _mean(a, (0.3, 0.6), (0.08, 0.22)) - 0.03
    assert abs(_mean(b, (0.3, 0.6), (0.75, 0.9)) - _mean(a, (0.3, 0.6), (0.75, 0.9))) < 0.01


def test_effusion_whitens_the_lung_base_and_consolidation_its_lobe():
    base = _base()
    a = render_frontal(base, H, W)
    eff = render_frontal(_without(base, effusion=Sided(PRESENT, "left", 0.35)), H, W)
    assert _mean(eff, (0.6, 0.72), (0.7, 0.88)) > _mean(a, (0.6, 0.72), (0.7, 0.88)) + 0.08
    cons = render_frontal(_without(base, consolidation=Sided(PRESENT, "right", 0.9, "upper")), H, W)
    assert _mean(cons, (0.22, 0.38), (0.12, 0.35)) > _mean(a, (0.22, 0.38), (0.12, 0.35)) + 0.05


def test_cardiomegaly_widens_the_heart_and_devices_add_bright_lines():
    base = _base()
    a = render_frontal(base, H, W)
    big = render_frontal(_without(base, cardiomegaly=PRESENT, ctr=0.66), H, W)
    assert _mean(big, (0.62, 0.72), (0.6, 0.8)) > _mean(a, (0.62, 0.72), (0.6, 0.8)) + 0.1
    dev = render_frontal(_without(base, devices=("cvc", "pacemaker")), H, W)
    assert (dev > 0.93).sum() > (a > 0.93).sum() + 200


@pytest.mark.parametrize("seed", [0, 1])
def test_renders_are_finite_and_in_range(seed):
    image = render_frontal(draw_study(seed, 3), 160, 140)
    assert image.dtype == np.float32 and image.shape == (160, 140)
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1
