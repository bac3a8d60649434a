"""Where-the-model-looked overlays: a valid RGB Secondary Capture per finding called present,
labelled as an approximate attention map, capped per study and sent where `send_heat_maps`."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pydicom
import pytest

from dicom_node.reporting.heatmap import (
    LABEL,
    MAX_SIDE,
    build_heatmap_sc,
    fit_to_overlay,
    ranked_positives,
    render_overlay,
)
from dicom_node.reporting.uids import heatmap_uids
from dicom_node.settings import DestinationSettings, WorkerSettings
from storage import profiles
from storage.states import StudyState
from tests.dicom_factory import StudyUids, make_radiograph
from tests.report_samples import WHEN, algorithm, dciodvfy, dx_image, findings
from tests.test_report_worker import _Node, checkpoint, model  # noqa: F401  fixtures

pytestmark = pytest.mark.slow  # the worker tests load a (tiny) model


def _overlay(tmp_path, clinical_use=False):
    source = dx_image("1.2.826.0.1.3680043.8.498.1")
    finding = next(f for f in findings() if f.label == "Pneumothorax")  # present, 0.88
    pixels = np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (64, 1))
    heat = np.zeros((64, 48), np.float32)
    heat[40:60, 30:45] = 1.0  # the "finding" sits lower right
    uids = heatmap_uids("ab" * 32, source.StudyInstanceUID, "demo", version=1,
                        labels=[finding.label])[finding.label]
    ds = build_heatmap_sc(source=source, pixels=pixels, heat=heat, finding=finding,
                          algorithm=algorithm(clinical_use=clinical_use), uids=uids,
                          content_datetime=WHEN)
    path = tmp_path / "overlay.dcm"
    ds.save_as(path, enforce_file_format=True)
    return source, pydicom.dcmread(path), path


def test_overlay_is_a_valid_rgb_secondary_capture_of_the_same_study(tmp_path):
    source, ds, path = _overlay(tmp_path)
    errors, _ = dciodvfy(path)
    assert errors == []
    assert (ds.StudyInstanceUID, ds.PatientID) == (source.StudyInstanceUID, source.PatientID)
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert LABEL in ds.ImageComments and "Pneumothorax" in ds.ImageComments
    assert "NOT FOR CLINICAL USE" in ds.SeriesDescription + ds.ImageComments


def test_the_map_tints_where_it_is_high_and_leaves_the_rest_grey(tmp_path):
    _, ds, _ = _overlay(tmp_path)
    rgb = ds.pixel_array.astype(int)
    band = ds.Rows - 64  # the text band above the image
    image = rgb[band:]
    hot, cold = image[50, 37], image[10, 37]
    assert hot[0] - hot[2] > 60  # orange/yellow over the map's maximum
    assert abs(cold[0] - cold[2]) <= 2  # grey where the map is at its lowest
    assert rgb[:band].max() == 255  # the title and label are drawn in the band


def test_an_overlay_made_at_its_own_size_looks_like_one_from_the_full_image():
    """The worker shrinks each image once and makes its maps at the overlay's size; the
    overlay must look as it did when image and map came at full size."""
    from ml.heatmap import canvas_to_image

    rows, columns = 2048, 1680
    pixels = np.add.outer(np.arange(rows) * 7 % 256, np.arange(columns) * 3 % 256)
    pixels = (pixels % 256).astype(np.uint8)
    canvas_map = np.zeros((320, 320), np.float32)
    canvas_map[200:260, 150:230] = 1.0  # lower middle, with the canvas padding left and right
    canvas_map += np.linspace(0, 0.3, 320, dtype=np.float32)
    finding = next(f for f in findings() if f.label == "Pneumothorax")
    full = render_overlay(pixels, canvas_to_image(canvas_map, (rows, columns)), finding,
                          algorithm())
    grey = fit_to_overlay(pixels)
    assert grey.shape == (MAX_SIDE, 840)
    small = render_overlay(grey, canvas_to_image(canvas_map, (rows, columns), grey.shape),
                           finding, algorithm())
    assert small.shape == full.shape
    difference = np.abs(small.astype(int) - full.astype(int))
    assert np.percentile(difference, 99.9) <= 2 and difference.mean() < 0.1
    image = small[small.shape[0] - MAX_SIDE:]
    assert image[700, 420, 0] - image[700, 420, 2] > 100  # tinted over the map's maximum
    assert np.array_equal(fit_to_overlay(grey), grey)  # shrinking twice changes nothing


def test_ranked_positives_are_present_prompted_findings_highest_first():
    chosen = ranked_positives(findings(), cap=5)
    assert [f.label for f in chosen] == ["Pneumothorax", "Atelectasis", "Enlarged Cardiomediastinum"]
    assert [f.label for f in ranked_positives(findings(), cap=1)] == ["Pneumothorax"]
    derived = replace(findings()[0], derivation="1 - max", probability=0.99)
    assert derived.label not in [f.label for f in ranked_positives([derived], cap=3)]


@pytest.fixture
def heat_node(tmp_path, checkpoint, database, model):  # noqa: F811
    from dicom_node.settings import load_settings

    settings = load_settings(environ={}, overrides={
        "node": {"data_dir": str(tmp_path / "data")},
        "model": {"checkpoints": [str(checkpoint)], "name": "tiny-test"},
        "worklist": {"stable_seconds": 1},
    })
    pacs = DestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=1)
    archive = DestinationSettings(name="archive", ae_title="ARCH", host="127.0.0.1", port=2,
                                  send_heat_maps=False)
    settings = replace(settings, destinations=[pacs, archive],
                       worker=WorkerSettings(heat_maps_per_study=2))
    return _Node(settings, database, model)


def _activate(node, threshold: float) -> None:
    with node.database.sessions.begin() as session:
        labels = [f.label for f in node.worker.model().catalogue.findings]
        created = profiles.create_profile(session, dict.fromkeys(labels, threshold),
                                          author="test", method="set")
        profiles.activate(session, created.version, by="test")


@contextmanager
def _image_tower_passes():
    """Counts the image tower's passes (any model) inside the block by its first convolution,
    the only one that takes the 3 input channels: yields [count]."""
    from torch.nn import Conv2d
    from torch.nn.modules.module import register_module_forward_hook

    passes = [0]

    def count(module, _inputs, _output):
        passes[0] += isinstance(module, Conv2d) and module.in_channels == 3

    handle = register_module_forward_hook(count)
    try:
        yield passes
    finally:
        handle.remove()


def test_worker_sends_one_overlay_per_positive_finding_up_to_the_cap(heat_node):
    _activate(heat_node, 0.12)  # every finding present (scores lie in [0.119, 0.881])
    study = StudyUids()
    heat_node.receive(make_radiograph(view="PA", study=study, seed=1, rows=160, columns=128))
    with _image_tower_passes() as passes:
        assert heat_node.process().state is StudyState.DONE
    assert passes == [1]  # the maps come from the scoring pass: the tower ran once
    (result,) = heat_node.results(study.study)
    overlays = [d for d in heat_node.deliveries() if d.kind == "heatmap"]
    assert {d.destination for d in overlays} == {"pacs"}  # archive: send_heat_maps = false
    assert len(overlays) == 2  # [worker] heat_maps_per_study
    top = sorted((f for f in result.findings if not f.derivation),
                 key=lambda f: f.probability, reverse=True)[:2]
    shown = []
    for delivery in overlays:
        path = heat_node.outbox.absolute(delivery.file_path)
        assert dciodvfy(path)[0] == []
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == study.study and LABEL in ds.ImageComments
        shown.append(ds.ImageComments.split(":")[0])
    assert sorted(shown) == sorted(f.label for f in top)


def test_worker_threads_sharing_one_model_get_maps_from_the_shared_pass(
        heat_node, model):  # noqa: F811
    """`worker --concurrency N`: the shared scorer hands each study its images' local features."""
    from ml.batching import BatchingScorer

    heat_node.worker._model = type(model)(BatchingScorer(model.engine), model.catalogue)
    _activate(heat_node, 0.12)
    study = StudyUids()
    heat_node.receive(make_radiograph(view="PA", study=study, seed=5, rows=128, columns=160))
    with _image_tower_passes() as passes:
        assert heat_node.process().state is StudyState.DONE
    assert passes == [1]
    overlays = [d for d in heat_node.deliveries() if d.kind == "heatmap"]
    assert len(overlays) == 2
    assert all(dciodvfy(heat_node.outbox.absolute(d.file_path))[0] == [] for d in overlays)


def test_no_overlay_when_no_finding_is_called_present(heat_node):
    _activate(heat_node, 0.88)
    study = StudyUids()
    heat_node.receive(make_radiograph(view="PA", study=study, seed=2))
    assert heat_node.process().state is StudyState.DONE
    (result,) = heat_node.results(study.study)
    assert not any(f.present for f in result.findings)
    no_finding = next(f for f in result.findings if f.label == "No Finding")
    assert "1 - the highest" in no_finding.derivation  # stored as derived
    others = max(f.probability for f in result.findings if not f.derivation)
    assert no_finding.probability == pytest.approx(1 - others)
    assert [d for d in heat_node.deliveries() if d.kind == "heatmap"] == []


def test_a_destination_added_later_gets_the_stored_overlays(heat_node):
    _activate(heat_node, 0.12)
    study = StudyUids()
    heat_node.receive(make_radiograph(view="PA", study=study, seed=3))
    heat_node.process()
    viewer = DestinationSettings(name="viewer", ae_title="VIEW", host="127.0.0.1", port=3)
    settings = heat_node.worker.settings
    heat_node.worker.settings = replace(settings, destinations=[*settings.destinations, viewer])
    # a late lateral changes no input: the stored result is delivered, not remade
    heat_node.receive(make_radiograph(view="LL", study=study, seed=4, instance_number=2))
    assert heat_node.process().state is StudyState.DONE
    assert len(heat_node.results(study.study)) == 1
    sent = {(d.destination, d.kind) for d in heat_node.deliveries()}
    pacs = sorted(d.sop_instance_uid for d in heat_node.deliveries()
                  if d.destination == "pacs" and d.kind == "heatmap")
    later = sorted(d.sop_instance_uid for d in heat_node.deliveries()
                   if d.destination == "viewer" and d.kind == "heatmap")
    assert len(pacs) == 2 and later == pacs
    assert ("viewer", "sr") in sent and ("viewer", "summary") in sent
