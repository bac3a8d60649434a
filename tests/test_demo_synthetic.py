"""The shipped demo model and catalogue on fresh synthetic phantoms (issue 14 items 4 and 5):
at the shipped thresholds it calls nothing on phantoms without findings beyond the measured
false-positive rate, the derived "No Finding" score separates studies without pathology, and
each attention map's maximum falls inside the drawn finding for most positive cases.

The phantoms are rendered in memory (`ml.synth`) and reduced to 8 bits with the engine's
default "equalize" conversion, as `dicom-node synth --format png` writes them. The floors and
ceilings below were measured on other seeds and larger sets (numbers beside each); they leave
room for the sampling error of these smaller sets, not for a worse model.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dicom_node.shipped import demo_checkpoint, findings_file
from ml.catalogue import load_catalogue
from ml.engine import ZeroShotEngine
from ml.heatmap import canvas_to_image, peak
from ml.preprocess import to_canvas
from ml.synth.convert import to_uint8_equalized
from ml.synth.render import finding_region, frontal_shape, render_frontal
from ml.synth.spec import PRESENT, SYNTH_FINDINGS, StudySpec, draw_study

pytestmark = pytest.mark.slow

HEIGHT = 512  # rows of each phantom
# Measured at 512 rows on seeds 2002 (300 studies) and 2003 (150 phantoms without findings):
# no finding called on 0 of 150 (95 % upper bound 2 %); derived No Finding AUROC 0.982 (51
# studies without pathology of 300); heat-map maximum inside the drawn region for 184 of 257
# findings called present (0.716: Cardiomegaly 58/58, Pleural Effusion 48/50, Consolidation
# 39/49, Lung Opacity 32/48, Pneumothorax 7/52: its map peaks off the air band).
FALSE_POSITIVE_CEILING = 0.05
NO_FINDING_AUROC_FLOOR = 0.93
HIT_RATE_FLOOR = 0.60
MAPPED = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Opacity")


@pytest.fixture(scope="module")
def engine() -> ZeroShotEngine:
    return ZeroShotEngine([demo_checkpoint()], load_catalogue(findings_file()), device="cpu")


@pytest.fixture(scope="module")
def studies() -> list[tuple[StudySpec, np.ndarray]]:
    """100 fresh studies (about 35 % prevalence per finding) with their 8-bit frontals."""
    specs = [draw_study(3004, i) for i in range(100)]
    return [(spec, _image(spec)) for spec in specs]


def _image(spec: StudySpec) -> np.ndarray:
    return to_uint8_equalized(render_frontal(spec, *frontal_shape(spec, HEIGHT)))


def _without_findings(seed: int, count: int) -> list[StudySpec]:
    found, index = [], 0
    while len(found) < count:
        spec = draw_study(seed, index)
        index += 1
        if all(spec.state(f) is None for f in SYNTH_FINDINGS):
            found.append(spec)
    return found


def test_nothing_is_called_on_phantoms_without_findings(engine):
    specs = _without_findings(seed=3003, count=50)
    scores = engine.score_uint8([_image(s) for s in specs])
    prompted = [i for i, f in enumerate(engine.findings) if not f.derived]
    columns = [engine.labels.index(engine.findings[i].label) for i in prompted]
    thresholds = np.array([engine.findings[i].default_threshold for i in prompted])
    called = (scores[:, columns] >= thresholds).any(axis=1)
    print(f"false-positive rate {called.mean():.3f} ({called.sum()} of {len(specs)})")
    assert called.mean() <= FALSE_POSITIVE_CEILING
    no_finding = scores[:, engine.labels.index("No Finding")]
    assert (no_finding >= 0.5).mean() >= 1 - FALSE_POSITIVE_CEILING  # reported normal


def test_derived_no_finding_separates_studies_without_pathology(engine, studies):
    specs = [spec for spec, _ in studies]
    scores = engine.score_uint8([image for _, image in studies])
    # CheXpert's No Finding: no pathology (support devices are not one), as ml.synth.reports
    normal = [all(s.state(f) is None for f in SYNTH_FINDINGS if f != "Support Devices")
              for s in specs]
    auroc = roc_auc_score(normal, scores[:, engine.labels.index("No Finding")])
    print(f"No Finding (derived) AUROC {auroc:.3f}, {sum(normal)} of {len(specs)} normal")
    assert auroc >= NO_FINDING_AUROC_FLOOR


def test_heat_map_maximum_falls_inside_the_drawn_finding(engine, studies):
    cases = [(spec, image) for spec, image in studies
             if any(spec.state(f) == PRESENT for f in MAPPED)]
    canvases = np.stack([to_canvas(image) for _, image in cases])
    scores = engine.score_canvases(canvases)
    hits: dict[str, list[bool]] = {f: [] for f in MAPPED}
    for start in range(0, len(cases), 16):
        maps = engine.heat_maps(canvases[start : start + 16], MAPPED)
        for (spec, image), row_scores, found in zip(cases[start : start + 16],
                                                    scores[start : start + 16], maps):
            for label, canvas_map in zip(MAPPED, found, strict=True):
                # overlays are made for findings called present only
                if spec.state(label) != PRESENT or row_scores[engine.labels.index(label)] < 0.5:
                    continue
                row, column = peak(canvas_to_image(canvas_map, image.shape))
                hits[label].append(bool(finding_region(spec, label, *image.shape)[row, column]))
    total = [hit for found in hits.values() for hit in found]
    rate = sum(total) / len(total)
    print(f"heat-map hit rate {rate:.3f} ({sum(total)} of {len(total)}); "
          + ", ".join(f"{f} {sum(h)}/{len(h)}" for f, h in hits.items()))
    assert len(total) >= 40
    assert rate >= HIT_RATE_FLOOR
