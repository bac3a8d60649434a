"""`worker --concurrency N`: one engine serves N worker threads, their studies' images scored
together (ml.batching) and each thread given exactly the scores its own images get alone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from engine_samples import FINDINGS_FILE, textured_image

from ml.batching import BatchingScorer
from ml.catalogue import load_catalogue
from ml.engine import ZeroShotEngine
from ml.testing import write_random_checkpoint


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ZeroShotEngine:
    checkpoint = write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=4)
    return ZeroShotEngine([checkpoint], load_catalogue(FINDINGS_FILE), device="cpu",
                          batch_size=16)


def test_studies_scored_together_get_their_own_scores(engine: ZeroShotEngine) -> None:
    studies = [[textured_image(120, 100, seed=10 * s + i) for i in range(1 + s % 3)]
               for s in range(8)]
    alone = [engine.score_uint8(images) for images in studies]
    scorer = BatchingScorer(engine, max_images=16, window_seconds=0.2)
    start = threading.Barrier(len(studies))

    def score(images):
        start.wait()  # every study asks at once, as N busy workers would
        return scorer.score_uint8(images)

    with ThreadPoolExecutor(len(studies)) as pool:
        together = list(pool.map(score, studies))
    for mine, reference in zip(together, alone, strict=True):
        assert mine.shape == reference.shape
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-5)
    assert scorer.batches < len(studies)  # fewer forward passes than studies
    assert (scorer.labels, scorer.identity) == (engine.labels, engine.identity)


def test_an_engine_error_reaches_every_caller_of_the_batch(engine: ZeroShotEngine) -> None:
    scorer = BatchingScorer(engine)
    with pytest.raises(ValueError):
        scorer.score_uint8([np.zeros((10, 10, 3, 2), dtype=np.uint8)])  # not an image
    assert scorer.score_uint8([textured_image(60, 50)]).shape == (1, len(engine.labels))


def test_embeddings_kept_for_the_workbench_are_each_callers_own(engine: ZeroShotEngine) -> None:
    """The worker keeps image embeddings with its results (prompt workbench): scored together,
    each study still gets its own images' rows, equal to scoring them alone."""
    studies = [[textured_image(90, 80, seed=s)] * (1 + s % 2) for s in range(4)]
    alone = [engine.score_uint8_with_embeddings(images) for images in studies]
    scorer = BatchingScorer(engine, max_images=16, window_seconds=0.2)
    with ThreadPoolExecutor(len(studies)) as pool:
        together = list(pool.map(scorer.score_uint8_with_embeddings, studies))
    for mine, reference in zip(together, alone, strict=True):
        assert mine.embeddings.keys() == reference.embeddings.keys()
        for sha, features in reference.embeddings.items():
            np.testing.assert_allclose(mine.embeddings[sha], features, rtol=0, atol=1e-5)
        np.testing.assert_allclose(mine.probabilities, reference.probabilities, atol=1e-5)
    assert callable(scorer.heat_maps)  # the worker's attention maps go to the engine itself


def test_local_features_for_attention_maps_are_each_callers_own(engine: ZeroShotEngine) -> None:
    """The worker keeps each image's local features from scoring to make its attention maps:
    scored together, a study that asked for them gets its own images' rows; one that did not
    gets none."""
    studies = [[textured_image(90, 80, seed=s), textured_image(70, 90, seed=s + 9)][: 1 + s % 2]
               for s in range(4)]
    alone = [engine.score_uint8_with_embeddings(images, local_features=True)
             for images in studies]
    scorer = BatchingScorer(engine, max_images=16, window_seconds=0.2)
    start = threading.Barrier(len(studies))

    def score(s: int):
        start.wait()
        return scorer.score_uint8_with_embeddings(studies[s], local_features=s % 3 != 0)

    with ThreadPoolExecutor(len(studies)) as pool:
        together = list(pool.map(score, range(len(studies))))
    assert scorer.batches < len(studies)
    for s, (mine, reference) in enumerate(zip(together, alone, strict=True)):
        if s % 3 == 0:
            assert mine.local_features == {}
            continue
        assert mine.local_features.keys() == reference.local_features.keys()
        for sha, local in reference.local_features.items():
            assert mine.local_features[sha].shape == local.shape == (len(studies[s]), 7, 7, 64)
            np.testing.assert_allclose(mine.local_features[sha], local, rtol=0, atol=1e-5)
