"""Our probabilities equal the CheXzero reference within 1e-4, and the comparison has teeth.

The reference side is `engine_reference`, re-derived from ../shared/chexzero-reference.md with
no code shared with `ml/`. Checkpoints are seeded random ones in the released file layout
(302-key OpenAI naming, float16 weights beside float32 embeddings and LayerNorms).
"""

from __future__ import annotations

from pathlib import Path

import engine_reference as ref
import numpy as np
import pytest
from engine_samples import TINY_320, all_prompted_catalogue, sensitive_checkpoint, textured_image

from ml.architecture import ClipArchitecture
from ml.catalogue import MAX_PROBABILITY, MIN_PROBABILITY, Catalogue
from ml.engine import ZeroShotEngine
from ml.testing import random_model, released_state_dict, save_released_layout

TOLERANCE = 1e-4

# (height, width): 2324 and 1162 give a 319-pixel long side; small ones are up-sampled.
SIZES = [(2324, 1900), (1162, 950), (200, 150), (300, 500), (320, 320)]


@pytest.fixture(scope="module")
def catalogue():
    return all_prompted_catalogue()


@pytest.fixture(scope="module")
def pairs(catalogue):
    return [(f.positive_prompt, f.negative_prompt) for f in catalogue.enabled()]


@pytest.fixture(scope="module")
def images():
    return [textured_image(h, w, seed=i) for i, (h, w) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return [sensitive_checkpoint(folder / f"seed{seed}.pt", seed=seed) for seed in (1, 2)]


@pytest.fixture(scope="module")
def reference(images, checkpoints, pairs):
    return ref.probabilities(images, [str(checkpoints[0])], pairs)


@pytest.fixture(scope="module")
def ours(images, checkpoints, catalogue):
    return ZeroShotEngine([checkpoints[0]], catalogue, device="cpu").score_uint8(images)


def test_single_checkpoint_matches_reference(ours, reference):
    assert ours.shape == reference.shape == (len(SIZES), 13)
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_ensemble_is_the_mean_of_probabilities_and_matches_reference(
    images, checkpoints, catalogue, pairs
):
    ensemble = ZeroShotEngine(checkpoints, catalogue, device="cpu").score_uint8(images)
    singles = [
        ZeroShotEngine([c], catalogue, device="cpu").score_uint8(images) for c in checkpoints
    ]
    expected = ref.probabilities(images, [str(c) for c in checkpoints], pairs)
    assert np.abs(ensemble - expected).max() <= TOLERANCE
    assert np.allclose(ensemble, np.mean(singles, axis=0), atol=1e-12)
    assert np.abs(singles[0] - singles[1]).max() > 1e-3  # two different members really vote


def test_vit_b16_at_320_variant_matches_reference(tmp_path, images, catalogue, pairs):
    path = sensitive_checkpoint(tmp_path / "b16.pt", seed=5, arch=TINY_320)
    engine = ZeroShotEngine([path], catalogue, device="cpu")
    assert engine._members[0].image_size == 320
    expected = ref.probabilities(images[:3], [str(path)], pairs)
    assert np.abs(engine.score_uint8(images[:3]) - expected).max() <= TOLERANCE


def test_full_vit_b32_checkpoint_loads_and_matches_reference(tmp_path, images, catalogue):
    model = random_model(ClipArchitecture(), seed=0)  # the released shapes: 302 keys, ~350 MB
    tensors = released_state_dict(model)
    assert len(tensors) == 302
    path = save_released_layout(model, tmp_path / "b32.pt")
    del model, tensors
    one = Catalogue((catalogue.by_label("Pleural Effusion"),))  # one prompt pair keeps it quick
    engine = ZeroShotEngine([path], one, device="cpu")
    pair = [("pleural effusion", "no pleural effusion")]
    expected = ref.probabilities(images[1:2], [str(path)], pair)
    assert np.abs(engine.score_uint8(images[1:2]) - expected).max() <= TOLERANCE


@pytest.mark.parametrize(
    "mistake",
    ["antialias", "round_size", "bicubic_canvas", "resize_uint8_first", "imagenet_stats",
     "logit_scale"],
)
def test_each_known_mistake_would_be_caught(mistake, ours, images, checkpoints, pairs):
    wrong = ref.probabilities(images, [str(checkpoints[0])], pairs, ref.Mistakes(**{mistake: True}))
    assert np.abs(ours - wrong).max() > TOLERANCE


def test_probabilities_stay_inside_the_reachable_range(ours):
    assert MIN_PROBABILITY == pytest.approx(0.1192, abs=1e-4)
    assert MAX_PROBABILITY == pytest.approx(0.8808, abs=1e-4)
    assert ours.min() >= MIN_PROBABILITY and ours.max() <= MAX_PROBABILITY
