"""Load a CheXzero / OpenAI-CLIP checkpoint: a plain PyTorch state dict in OpenAI layout.

Loading is `torch.load(weights_only=True)` (no code from the file ever runs), then a short
pipeline of named adapters that bring tolerated variants to the plain layout, then the model is
built from the tensor shapes (`ml.architecture`). The SHA-256 of the file's bytes is the
checkpoint's identity in every result. Anything that is not such a checkpoint raises
`CheckpointFormatError` with one line saying what was expected.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from open_clip.model import CLIP

from ml.architecture import (
    CheckpointFormatError,
    ClipArchitecture,
    build_model,
    infer_architecture,
    model_from_state_dict,
)

log = logging.getLogger(__name__)

EXPECTED = "a PyTorch state dict of a CLIP (ViT or ResNet) in OpenAI layout (torch.save(model.state_dict()))"
_NON_PARAMETER_KEYS = ("input_resolution", "context_length", "vocab_size")

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    sha256: str
    architecture: ClipArchitecture
    model: CLIP


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Read, adapt, check and build one checkpoint into a float32 CLIP in eval mode (CPU)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    digest = file_sha256(path)
    raw = _read(path)
    state_dict = adapt_state_dict(raw, path)
    architecture, state_dict = _fit_architecture(state_dict, path)
    try:
        model = model_from_state_dict(state_dict)
    except RuntimeError as exc:  # load_state_dict's size mismatch
        first = str(exc).strip().splitlines()[-1].strip()
        raise CheckpointFormatError(
            f"{path}: tensor shapes are inconsistent with {architecture.describe()}: {first}"
        ) from None
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{path}: {exc}") from None
    log.info(
        "checkpoint loaded",
        extra={"path": str(path), "sha256": digest, "architecture": architecture.as_dict()},
    )
    return LoadedCheckpoint(path=path, sha256=digest, architecture=architecture, model=model)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path: Path) -> Any:
    if zipfile.is_zipfile(path):
        _check_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  torch raises many types for foreign files
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointFormatError(
            f"{path}: not a loadable PyTorch file ({reason}); expected {EXPECTED}"
        ) from None


def _check_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        raise CheckpointFormatError(
            f"{path}: this is a TorchScript archive (torch.jit.save); expected {EXPECTED}"
        )
    if not any(n.endswith("/data.pkl") for n in names):
        raise CheckpointFormatError(
            f"{path}: a zip archive but not a PyTorch file; expected {EXPECTED}"
        )


# --- adapters: each takes the loaded object and returns it closer to a plain state dict ------


def unwrap_state_dict(obj: Any) -> Any:
    """Training checkpoints often wrap the weights: {"state_dict": {...}, "epoch": ...}."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return obj["state_dict"]
    return obj


def strip_module_prefix(obj: Any) -> Any:
    """(Distributed)DataParallel saves every key under "module."."""
    if isinstance(obj, Mapping) and obj and all(str(k).startswith("module.") for k in obj):
        return {str(k)[len("module."):]: v for k, v in obj.items()}
    return obj


ADAPTERS: tuple[Callable[[Any], Any], ...] = (unwrap_state_dict, strip_module_prefix)


def adapt_state_dict(obj: Any, path: Path) -> StateDict:
    for adapter in ADAPTERS:
        adapted = adapter(obj)
        if adapted is not obj:
            log.info("checkpoint adapted", extra={"path": str(path), "adapter": adapter.__name__})
        obj = adapted
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(
            f"{path}: contains a {type(obj).__name__}, not a dict of tensors; expected {EXPECTED}"
        )
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if others:
        log.warning("checkpoint entries that are not tensors ignored", extra={"keys": others[:20]})
    if not tensors:
        raise CheckpointFormatError(f"{path}: holds no tensors; expected {EXPECTED}")
    return tensors


def _fit_architecture(state_dict: StateDict, path: Path) -> tuple[ClipArchitecture, StateDict]:
    """Infer the architecture; drop (and log) keys that the architecture does not have."""
    try:
        architecture = infer_architecture(state_dict)
    except CheckpointFormatError as exc:
        raise CheckpointFormatError(f"{path}: {exc}") from None
    except (KeyError, IndexError, ValueError) as exc:
        raise CheckpointFormatError(
            f"{path}: tensor shapes do not describe a CLIP ({type(exc).__name__}: {exc}); "
            f"expected {EXPECTED}"
        ) from None
    try:
        with torch.device("meta"):  # key names only: no memory, no initialisation cost
            expected = set(build_model(architecture).state_dict())
    except (ValueError, RuntimeError, ZeroDivisionError, AssertionError) as exc:
        raise CheckpointFormatError(
            f"{path}: shapes imply an impossible CLIP ({architecture.describe()}: {exc})"
        ) from None
    unexpected = sorted(k for k in state_dict if k not in expected and k not in _NON_PARAMETER_KEYS)
    if unexpected:
        log.warning(
            "checkpoint keys unknown to the architecture ignored",
            extra={"path": str(path), "count": len(unexpected), "keys": unexpected[:20]},
        )
    return architecture, {k: v for k, v in state_dict.items() if k not in unexpected}
