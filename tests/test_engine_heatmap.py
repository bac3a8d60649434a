"""ml.heatmap: local prompt-evidence maps for both image towers and for an ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_samples import FINDINGS_FILE, textured_image

from ml.catalogue import load_catalogue
from ml.engine import ZeroShotEngine
from ml.heatmap import canvas_to_image, peak, resnet_grid, vit_sequence
from ml.preprocess import CANVAS, canvases_to_input, to_canvas
from ml.testing import TINY, TINY_RESNET, random_model, write_random_checkpoint


@pytest.fixture(scope="module")
def catalogue():
    return load_catalogue(FINDINGS_FILE)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("heat")
    return (write_random_checkpoint(folder / "vit.pt", TINY, seed=1),
            write_random_checkpoint(folder / "resnet.pt", TINY_RESNET, seed=2))


@pytest.fixture(scope="module")
def engines(checkpoints, catalogue):
    """The ViT alone, the ResNet alone, and both as an ensemble (loaded once)."""
    return [ZeroShotEngine(paths, catalogue, device="cpu")
            for paths in ([checkpoints[0]], [checkpoints[1]], list(checkpoints))]


def _canvases(count: int = 2) -> np.ndarray:
    return np.stack([to_canvas(textured_image(300 - 40 * i, 260, seed=i)) for i in range(count)])


def test_the_towers_internals_we_read_are_what_encode_image_uses():
    """The maps project each location as the pooled image feature is projected; if open_clip
    changed how its towers compose, these identities would break first."""
    pixels = canvases_to_input(_canvases(1), 224)
    vit = random_model(TINY, seed=1)
    with torch.inference_mode():
        cls = vit.visual.ln_post(vit_sequence(vit.visual, pixels)[:, 0]) @ vit.visual.proj
        assert torch.allclose(cls, vit.encode_image(pixels), atol=1e-5)
        resnet = random_model(TINY_RESNET, seed=2)
        pooled = resnet.visual.attnpool(resnet_grid(resnet.visual, pixels))
        assert torch.allclose(pooled, resnet.encode_image(pixels), atol=1e-5)


@pytest.mark.parametrize("which", [0, 1], ids=["vit", "resnet"])
def test_maps_cover_the_canvas_on_the_score_scale(engines, which):
    maps = engines[which].heat_maps(_canvases(), ["Pneumothorax", "Cardiomegaly"])
    assert maps.shape == (2, 2, CANVAS, CANVAS) and maps.dtype == np.float32
    assert 0.119 <= maps.min() and maps.max() <= 0.881
    assert maps[:, 0].std() > 0  # not flat: it says where


def test_an_ensemble_map_is_the_mean_of_its_members(engines):
    canvases, labels = _canvases(), ["Pleural Effusion"]
    both = engines[2].heat_maps(canvases, labels)
    alone = [engine.heat_maps(canvases, labels) for engine in engines[:2]]
    assert np.abs(both - (alone[0] + alone[1]) / 2).max() < 1e-6


@pytest.mark.parametrize("which", [0, 1, 2], ids=["vit", "resnet", "vit+resnet"])
def test_scoring_keeps_local_features_without_changing_a_score(engines, which):
    engine = engines[which]
    images = [textured_image(300 - 40 * i, 260, seed=i) for i in range(3)]
    plain = engine.score_uint8_with_embeddings(images)
    kept = engine.score_uint8_with_embeddings(images, local_features=True)
    assert np.array_equal(kept.probabilities, plain.probabilities)  # bit for bit
    assert plain.local_features == {}
    assert set(kept.local_features) == set(engine.identity.checkpoint_sha256s)
    assert all(f.shape == (3, 7, 7, 64) for f in kept.local_features.values())


@pytest.mark.parametrize("which", [0, 1, 2], ids=["vit", "resnet", "vit+resnet"])
def test_maps_from_the_scoring_pass_equal_maps_from_a_pass_of_their_own(engines, which):
    engine, labels = engines[which], ["Pneumothorax", "Cardiomegaly"]
    images = [textured_image(300 - 40 * i, 260, seed=i) for i in range(3)]
    kept = engine.score_uint8_with_embeddings(images, local_features=True).local_features
    separate = engine.heat_maps(np.stack([to_canvas(image) for image in images]), labels)
    shared = engine.maps_from_local(kept, labels)
    assert np.abs(shared - separate).max() < 1e-6
    second = engine.maps_from_local({sha: f[1:2] for sha, f in kept.items()}, labels[::-1])
    assert np.abs(second[0] - separate[1, ::-1]).max() < 1e-6  # one image's rows, any labels


def test_derived_findings_have_no_map(engines):
    with pytest.raises(ValueError, match="No Finding"):
        engines[0].heat_maps(_canvases(1), ["No Finding"])


def test_canvas_padding_is_cut_off_on_the_way_back_to_the_image():
    rows, columns = 400, 200  # pasted as 320 x 160 in the middle of the canvas
    canvas_map = np.zeros((CANVAS, CANVAS), np.float32)
    canvas_map[:, 80:240] = 1.0  # the image area
    canvas_map[300:, 200:240] = 2.0  # its lower right corner
    image_map = canvas_to_image(canvas_map, (rows, columns))
    assert image_map.shape == (rows, columns)
    assert image_map.min() >= 0.99  # no padding left in
    row, column = peak(image_map)
    assert row >= 300 and column >= 100
    small = canvas_to_image(canvas_map, (rows, columns), size=(100, 50))  # an overlay's size
    assert small.shape == (100, 50) and small.min() >= 0.99
    row, column = peak(small)
    assert row >= 75 and column >= 25
