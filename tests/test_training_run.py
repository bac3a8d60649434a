"""A short CPU training run: the contrastive loss falls, the exported checkpoint is a plain
OpenAI-layout state dict that the zero-shot engine loads, and a resumed run continues from the
saved step to the same weights as an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_node.shipped import findings_file
from ml.architecture import ClipArchitecture, model_from_state_dict
from ml.catalogue import load_catalogue
from ml.checkpoint import load_checkpoint
from ml.engine import ZeroShotEngine
from ml.synth.dataset import SynthOptions, generate
from ml.training import loop
from ml.training.config import TrainConfig
from ml.training.data import build_cache, load_pairs
from ml.training.images import model_input
from ml.training.impression import extract_impression
from ml.training.loop import PairEncoder, focus_sentence, mixed_precision_dtype, train
from ml.training.text import tokenize_reports

TINY = ClipArchitecture(embed_dim=32, image_size=64, patch_size=32, vision_width=64,
                        vision_layers=1, text_width=64, text_layers=1)
TINY_RESNET = ClipArchitecture(embed_dim=32, image_size=64, patch_size=32, vision_width=8,
                               vision_layers=4, text_width=64, text_layers=1,
                               resnet_layers=(1, 1, 1, 1))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train-data")
    generate(SynthOptions(out, 36, 17, "png", height=96))
    return out


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = {"architecture": TINY, "batch_size": 16, "lr": 2e-3, "optimizer": "adamw",
            "steps": 30, "val_fraction": 0.1, "validate_every": 0, "save_every": 10,
            "threads": 1, "seed": 5}
    base.update(kw)
    return TrainConfig(data=data, out=out, **base)


def _train_loss(state_dict: dict, data: Path) -> float:
    """Contrastive loss over the first 32 training pairs (full impressions)."""
    torch.manual_seed(0)
    model = model_from_state_dict(state_dict)
    pairs = load_pairs(data)[:32]
    images = build_cache(pairs, data / "cache-test")
    texts = [extract_impression(p.text).text for p in pairs]
    with torch.no_grad():
        return float(PairEncoder(model)(model_input(torch.from_numpy(images), 64),
                                        tokenize_reports(texts)))


def test_loss_falls_and_the_checkpoint_loads_through_the_engine(data, tmp_path):
    result = train(_config(data, tmp_path / "run", steps=40))
    assert result.steps == 40 and result.checkpoint.is_file()
    state = torch.load(result.checkpoint, weights_only=True)
    assert "visual.conv1.weight" in state and "token_embedding.weight" in state
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    initial = train(_config(data, tmp_path / "init", steps=1, lr=1e-12))
    before = _train_loss(torch.load(initial.checkpoint, weights_only=True), data)
    after = _train_loss(state, data)
    assert after < before - 0.3, (before, after)

    loaded = load_checkpoint(result.checkpoint)
    assert loaded.architecture == TINY
    catalogue = load_catalogue(findings_file())
    engine = ZeroShotEngine([result.checkpoint], catalogue, device="cpu", cpu_threads=1)
    scores = engine.score_uint8([np.full((80, 70), 128, np.uint8)])
    assert scores.shape == (1, len(engine.labels)) and np.isfinite(scores).all()
    events = [json.loads(line)["event"] for line in (tmp_path / "run" / "log.jsonl").open()]
    assert "train" in events and events[-1] == "done"


def test_a_resnet_image_tower_trains_and_loads_through_the_engine(data, tmp_path):
    result = train(_config(data, tmp_path / "rn", architecture=TINY_RESNET, steps=40))
    state = torch.load(result.checkpoint, weights_only=True)
    assert "visual.attnpool.c_proj.weight" in state and "visual.layer4.0.bn3.running_var" in state
    initial = train(_config(data, tmp_path / "init", architecture=TINY_RESNET, steps=1, lr=1e-12))
    before = _train_loss(torch.load(initial.checkpoint, weights_only=True), data)
    assert _train_loss(state, data) < before - 0.3
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.architecture == TINY_RESNET
    catalogue = load_catalogue(findings_file())
    engine = ZeroShotEngine([result.checkpoint], catalogue, device="cpu", cpu_threads=1)
    assert np.isfinite(engine.score_uint8([np.full((80, 70), 128, np.uint8)])).all()


def test_mixed_precision_is_float16_on_cuda_and_bfloat16_only_on_cpus_that_have_it(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert mixed_precision_dtype(True, cuda) == torch.float16
    assert mixed_precision_dtype(False, cuda) is None
    monkeypatch.setattr(loop, "cpu_has_native_bfloat16", lambda: True)
    assert mixed_precision_dtype(True, cpu) == torch.bfloat16
    assert mixed_precision_dtype(False, cpu) is None
    monkeypatch.setattr(loop, "cpu_has_native_bfloat16", lambda: False)
    assert mixed_precision_dtype(True, cpu) is None


@pytest.mark.parametrize("amp, precision", [(True, "bfloat16"), (False, "float32")])
def test_cpu_precision_is_logged_and_training_learns_in_it(data, tmp_path, monkeypatch, amp,
                                                            precision):
    monkeypatch.setattr(loop, "cpu_has_native_bfloat16", lambda: True)
    result = train(_config(data, tmp_path / "run", steps=40, amp=amp))
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    assert log[0] == {"event": "start", "step": 0, "device": "cpu", "precision": precision}
    assert result.precision == precision and result.architecture == TINY.describe()
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["visual.conv1.weight"].dtype == torch.float32
    initial = train(_config(data, tmp_path / "init", steps=1, lr=1e-12))
    before = _train_loss(torch.load(initial.checkpoint, weights_only=True), data)
    assert _train_loss(state, data) < before - 0.3


@pytest.mark.parametrize("architecture", [TINY, TINY_RESNET], ids=["vit", "resnet"])
def test_resume_continues_from_the_saved_step(data, tmp_path, architecture):
    arch = {"architecture": architecture}
    straight = train(_config(data, tmp_path / "straight", steps=16, save_every=8, **arch))
    train(_config(data, tmp_path / "split", steps=8, save_every=8, **arch))
    state = torch.load(tmp_path / "split" / "training-state.pt", weights_only=False)
    assert state["step"] == 8
    resumed = train(_config(data, tmp_path / "split", steps=16, save_every=8, resume=True, **arch))
    assert resumed.steps == 16
    a = torch.load(straight.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_resume_without_a_saved_state_is_a_clear_error(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(_config(data, tmp_path / "empty", resume=True))


def test_resume_with_other_options_names_them_and_keeps_the_saved_run(data, tmp_path):
    train(_config(data, tmp_path / "run", steps=4, save_every=4))
    saved_config = (tmp_path / "run" / "train-config.json").read_text()
    with pytest.raises(ValueError, match=r"cannot resume.*optimizer='adamw' \(now 'sgd'\)"):
        train(_config(data, tmp_path / "run", steps=8, optimizer="sgd", resume=True))
    assert (tmp_path / "run" / "train-config.json").read_text() == saved_config


def test_half_precision_export_loads_and_matches(data, tmp_path):
    result = train(_config(data, tmp_path / "half", steps=2, half_export=True))
    state = torch.load(result.checkpoint, weights_only=True)
    assert state["visual.conv1.weight"].dtype == torch.float16
    assert state["logit_scale"].dtype == torch.float32
    model = model_from_state_dict(state)
    assert next(model.parameters()).dtype == torch.float32


def test_stop_at_ends_inside_the_schedule_and_resume_finishes_it(data, tmp_path):
    stopped = train(_config(data, tmp_path / "stop", steps=12, stop_at=5, schedule="cosine"))
    assert stopped.steps == 5
    finished = train(_config(data, tmp_path / "stop", steps=12, schedule="cosine", resume=True))
    straight = train(_config(data, tmp_path / "whole", steps=12, schedule="cosine"))
    assert finished.steps == 12
    a = torch.load(straight.checkpoint, weights_only=True)
    b = torch.load(finished.checkpoint, weights_only=True)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_focus_sentence_picks_a_sentence_naming_the_term():
    report = ("FINDINGS: Heart size is normal. No pneumothorax.\n\nIMPRESSION: Large right "
              "pleural effusion. Support devices in place.")
    rng = np.random.default_rng(0)
    assert focus_sentence(report, "pneumothorax", rng) == "No pneumothorax."
    assert focus_sentence(report, "support devices", rng) == "Support devices in place."
    assert focus_sentence(report, "consolidation", rng) is None
