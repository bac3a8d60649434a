"""The engine as callers use it: tokenizer, text cache, score_paths over mixed inputs, devices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_samples import FINDINGS_FILE, radiograph_pixels, textured_image, write_dx
from PIL import Image

from ml.catalogue import Catalogue, load_catalogue, parse_catalogue
from ml.engine import ZeroShotEngine, resolve_device
from ml.testing import write_random_checkpoint
from ml.tokenizer import PromptTooLongError, tokenize


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(FINDINGS_FILE)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=11)


@pytest.fixture(scope="module")
def engine(checkpoint, catalogue) -> ZeroShotEngine:
    return ZeroShotEngine([checkpoint], catalogue, device="cpu", batch_size=2)


def test_tokenizer_gives_the_reference_example_and_lower_cases():
    tokens = tokenize(["Atelectasis", "ATELECTASIS"])
    assert tokens.shape == (2, 77)
    assert tokens[0, :6].tolist() == [49406, 992, 944, 6538, 533, 49407]
    assert tokens[0, 6:].eq(0).all() and torch.equal(tokens[0], tokens[1])


def test_a_prompt_longer_than_the_context_is_an_error(checkpoint):
    long = " ".join(["opacity"] * 80)
    with pytest.raises(PromptTooLongError, match="tokens long"):
        tokenize([long])
    entry = {"label": "Long", "positive_prompt": long, "negative_prompt": "no opacity",
             "code": {"value": "1", "scheme": "99DCMNODE", "meaning": "x"},
             "default_threshold": 0.5}
    with pytest.raises(PromptTooLongError):
        ZeroShotEngine([checkpoint], parse_catalogue({"finding": [entry]}), device="cpu")


def test_labels_follow_the_enabled_findings(engine, catalogue):
    assert engine.labels == tuple(f.label for f in catalogue.enabled())
    assert "No Finding" in engine.labels  # derived: no prompt pair is scored for it
    assert "No Finding" not in {f.label for f in engine.findings}
    assert engine.identity.name == "tiny" and len(engine.identity.checkpoint_sha256s) == 1


def test_text_embeddings_are_computed_once_per_checkpoint_and_prompt(checkpoint, catalogue):
    engine = ZeroShotEngine([checkpoint, checkpoint], catalogue, device="cpu")
    model = engine._members[0].model
    assert engine._members[1].model is model  # same bytes: one model, two votes
    assert len(engine._text_cache) == 2 * len(engine.findings)
    calls = []
    original = model.encode_text
    model.encode_text = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        engine.score_uint8([textured_image(300, 250)])
        engine.score_uint8([textured_image(250, 300)])
    finally:
        model.encode_text = original
    assert calls == []
    assert engine.identity.checkpoint_sha256s[0] == engine.identity.checkpoint_sha256s[1]


def test_batches_give_the_same_numbers_as_single_images(engine):
    images = [textured_image(200 + 10 * i, 180, seed=i) for i in range(5)]
    together = engine.score_uint8(images)  # batch_size 2: three batches
    alone = np.concatenate([engine.score_uint8([image]) for image in images])
    assert np.allclose(together, alone, atol=1e-6)


def test_score_paths_scores_in_order_and_says_why_it_skipped(tmp_path, engine):
    png = tmp_path / "a.png"
    Image.fromarray(textured_image(300, 240)).save(png)
    frontal = write_dx(tmp_path / "frontal.dcm", radiograph_pixels())
    lateral = write_dx(tmp_path / "lateral.dcm", radiograph_pixels(), ViewPosition="LL")
    no_view = write_dx(tmp_path / "noview.dcm", radiograph_pixels(), ViewPosition=None)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    paths = [png, lateral, frontal, text, tmp_path / "absent.dcm", no_view]
    seen = []
    results = engine.score_paths(paths, "equalize", on_result=seen.append)
    assert [r.path for r in results] == [str(p) for p in paths] == [r.path for r in seen]
    reasons = [r.skipped_reason for r in results]
    assert reasons[0] is None and reasons[2] is None and reasons[5] is None
    assert "lateral view" in reasons[1]
    assert reasons[3] == "unreadable: not a DICOM, PNG or JPEG file"
    assert reasons[4] == "file not found"
    assert results[5].flags == ("view_position_missing",)
    assert set(results[2].probabilities) == set(engine.labels)
    direct = engine.score_uint8([textured_image(300, 240)])[0]
    assert np.allclose(list(results[0].probabilities.values()), direct, atol=1e-9)


def test_processes_prepare_the_same_canvases_as_threads(tmp_path, checkpoint, catalogue):
    paths = [write_dx(tmp_path / f"{i}.dcm", radiograph_pixels(seed=i)) for i in range(3)]
    paths.append(tmp_path / "absent.dcm")
    with ZeroShotEngine([checkpoint], catalogue, device="cpu", prepare_mode="processes",
                        prepare_workers=2) as engine:
        in_processes = engine.score_paths(paths)
        engine.preparer.mode = "threads"
        engine.close()
        in_threads = engine.score_paths(paths)
    assert in_processes == in_threads
    assert in_processes[-1].skipped_reason == "file not found"
    with pytest.raises(ValueError, match="prepare mode must be"):
        ZeroShotEngine([checkpoint], catalogue, device="cpu", prepare_mode="fibres")


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")


def test_cpu_threads_are_applied(checkpoint, catalogue):
    before = torch.get_num_threads()
    try:
        ZeroShotEngine([checkpoint], catalogue, device="cpu", cpu_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_precision_agrees_with_float32(tmp_path, catalogue):
    from engine_samples import sensitive_checkpoint

    from ml.architecture import ClipArchitecture

    path = sensitive_checkpoint(tmp_path / "b32.pt", seed=3, arch=ClipArchitecture())
    images = [textured_image(1162, 950, seed=s) for s in range(8)]
    cpu = ZeroShotEngine([path], catalogue, device="cpu").score_uint8(images)
    full = ZeroShotEngine([path], catalogue, device="cuda", precision="float32").score_uint8(images)
    half = ZeroShotEngine([path], catalogue, device="cuda").score_uint8(images)
    assert np.abs(full - cpu).max() <= 1e-5
    assert np.abs(half - cpu).max() <= 1e-4
