"""Checkpoint loading: released layout, tolerated wrappers, and one-line errors for the rest."""

from __future__ import annotations

import hashlib
import logging
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from ml.architecture import CheckpointFormatError
from ml.checkpoint import load_checkpoint
from ml.testing import TINY, random_model, released_state_dict, write_random_checkpoint


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    return released_state_dict(random_model(TINY, seed=7))


def test_released_layout_loads_into_a_float32_model_with_its_sha256(tmp_path, tensors):
    path = tmp_path / "released.pt"
    torch.save(tensors, path)
    assert tensors["visual.proj"].dtype == torch.float16
    assert tensors["visual.ln_pre.weight"].dtype == torch.float32
    loaded = load_checkpoint(path)
    assert loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert loaded.architecture == TINY
    parameters = list(loaded.model.parameters())
    assert all(p.dtype == torch.float32 for p in parameters)
    assert torch.equal(loaded.model.visual.proj, tensors["visual.proj"].float())
    assert not loaded.model.training


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
        lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
    ],
    ids=["state_dict-wrapper", "module-prefix", "both"],
)
def test_wrapped_state_dicts_are_tolerated(tmp_path, tensors, wrap):
    path = tmp_path / "wrapped.pt"
    torch.save(wrap(tensors), path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded.model.text_projection, tensors["text_projection"].float())


def test_unexpected_keys_are_logged_and_ignored(tmp_path, tensors, caplog):
    path = tmp_path / "extra.pt"
    torch.save({**tensors, "projection_head.weight": torch.zeros(3)}, path)
    with caplog.at_level(logging.WARNING, logger="ml.checkpoint"):
        load_checkpoint(path)
    record = next(r for r in caplog.records if "unknown to the architecture" in r.getMessage())
    assert record.keys == ["projection_head.weight"]


def _torchscript(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, files are not
        module = torch.jit.script(torch.nn.Linear(2, 2))
    module.save(str(path))


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("weights/readme.txt", "hello")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("just text"), "not a loadable PyTorch file"),
        (lambda p: p.write_bytes(b""), "not a loadable PyTorch file"),
        (_zip, "a zip archive but not a PyTorch file"),
        (_torchscript, "TorchScript archive"),
        (lambda p: torch.save(torch.nn.Linear(2, 2), p), "not a loadable PyTorch file"),
        (lambda p: torch.save([torch.zeros(2)], p), "contains a list"),
        (lambda p: torch.save({"epoch": 3}, p), "holds no tensors"),
        (lambda p: torch.save({"fc.weight": torch.zeros(2, 2)}, p), "missing: visual.conv1.weight"),
    ],
    ids=["text", "empty", "zip", "torchscript", "pickled-module", "list", "no-tensors", "not-clip"],
)
def test_files_that_are_not_checkpoints_get_one_line_errors(tmp_path, make, message):
    path = tmp_path / "candidate.pt"
    make(path)
    with pytest.raises(CheckpointFormatError) as caught:
        load_checkpoint(path)
    text = str(caught.value)
    assert message in text and str(path) in text and "\n" not in text
    assert "expected" in text


def test_inconsistent_shapes_are_a_format_error(tmp_path, tensors):
    broken = dict(tensors)
    broken["visual.transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(10, 10)
    path = tmp_path / "shapes.pt"
    torch.save(broken, path)
    with pytest.raises(CheckpointFormatError, match="inconsistent") as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value)


def test_missing_layer_is_a_format_error(tmp_path, tensors):
    partial = {k: v for k, v in tensors.items() if ".resblocks.1.attn.in_proj_bias" not in k}
    path = tmp_path / "partial.pt"
    torch.save(partial, path)
    with pytest.raises(CheckpointFormatError, match="missing"):
        load_checkpoint(path)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_identity_is_the_bytes_not_the_name(tmp_path):
    a = load_checkpoint(write_random_checkpoint(tmp_path / "a.pt", seed=1))
    b = load_checkpoint(write_random_checkpoint(tmp_path / "b.pt", seed=2))
    copy = tmp_path / "renamed.pt"
    copy.write_bytes(a.path.read_bytes())
    assert a.sha256 != b.sha256 and load_checkpoint(copy).sha256 == a.sha256
