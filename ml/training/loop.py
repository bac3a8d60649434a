"""CheXzero's contrastive training: image and report embeddings, logits scaled by logit_scale, the
mean of cross-entropy over image->text and text->image, one batch at a time.

Files under `out/`:
- `checkpoint.pt`: the exported model, a plain OpenAI-layout state dict (what the engine and
  `ml.architecture.model_from_state_dict` load); rewritten at every save and at the end;
- `training-state.pt`: model, optimizer, scheduler and step, for `resume`;
- `train-config.json`, `log.jsonl` (one JSON line per log/validation event);
- `cache/`: the images after step A.
Several GPUs: start with `torchrun --nproc_per_node N -m dicom_node.cli train ...`; each rank
takes its share of every batch (DistributedDataParallel), rank 0 writes files.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ml.architecture import (
    build_model,
    infer_architecture,
    input_size,
    model_from_state_dict,
    openai_state_dict,
)
from ml.synth.spec import SYNTH_FINDINGS
from ml.training.config import TrainConfig, dump
from ml.training.data import build_cache, load_pairs
from ml.training.images import model_input
from ml.training.impression import extract_impression
from ml.training.text import sample_sentences, sentences, tokenize_reports
from ml.training.validate import (
    auroc_table,
    default_prompts,
    image_features,
    labels_for,
    prompt_pair_scores,
)

MAX_LOGIT_SCALE = math.log(100.0)
Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass
class TrainResult:
    checkpoint: Path
    steps: int
    first_loss: float | None
    last_loss: float | None
    validation: dict = field(default_factory=dict)
    seconds: float = 0.0
    text_sources: dict = field(default_factory=dict)
    architecture: str = ""
    precision: str = "float32"


@dataclass
class _Run:
    config: TrainConfig
    device: torch.device
    rank: int
    world: int
    model: torch.nn.Module
    ddp: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    autocast_dtype: torch.dtype | None
    step: int = 0
    train_images: np.ndarray | None = None  # for refresh_batchnorm
    train_idx: np.ndarray | None = None
    batchnorm_step: int = -1  # the step whose weights the BatchNorm statistics describe


def train(config: TrainConfig, progress: Progress | None = None) -> TrainResult:
    config.check()
    started = time.monotonic()
    device, rank, world = _setup_device(config)
    torch.manual_seed(config.seed)
    pairs = load_pairs(config.data, config.image_column, config.text_column)
    texts, sources = _training_texts(config, [p.text for p in pairs])
    images = build_cache(pairs, config.out / "cache", config.conversion,
                         (lambda n: progress("images", n, len(pairs))) if progress else None)
    train_idx, val_idx = _split(len(pairs), config)
    run = _make_run(config, device, rank, world)
    run.train_images, run.train_idx = images, train_idx
    if rank == 0:
        config.out.mkdir(parents=True, exist_ok=True)
        dump(config, config.out / "train-config.json")
        _log(config.out, {"event": "start", "step": run.step, "device": str(device),
                          "precision": _precision(run)})
    labels_csv = config.labels_csv or _sibling_labels(config.data)
    val_labels = labels_for([pairs[i].image for i in val_idx], labels_csv) if labels_csv else {}
    steps_per_epoch = max(1, len(train_idx) // config.batch_size)
    total = config.steps or config.epochs * steps_per_epoch
    end = min(total, config.stop_at) if config.stop_at else total
    first = last = None
    validation: dict = {}
    while run.step < end:
        batch = _batch_indices(config, train_idx, run.step, steps_per_epoch, rank, world)
        loss = _train_step(run, images, texts, batch, [p.text for p in pairs])
        first = loss if first is None else first
        last = loss
        run.step += 1
        if progress:
            progress("train", run.step, total)
        if rank == 0:
            _after_step(run, loss, total, images, texts, val_idx, val_labels, validation)
    if rank == 0:
        validation.update(_validate(run, images, texts, val_idx, val_labels))
        _save(run)
        _log(config.out, {"event": "done", "step": run.step, **validation})
    return TrainResult(config.out / "checkpoint.pt", run.step, first, last, validation,
                       time.monotonic() - started, sources,
                       infer_architecture(run.model.state_dict()).describe(), _precision(run))


def _precision(run: _Run) -> str:
    return str(run.autocast_dtype or torch.float32).removeprefix("torch.")


def _after_step(run: _Run, loss: float, total: int, images: np.ndarray, texts: list[str],
                val_idx: np.ndarray, val_labels: dict, validation: dict) -> None:
    cfg = run.config
    if run.step % 10 == 0:
        _log(cfg.out, {"event": "train", "step": run.step, "loss": round(loss, 5),
                       "lr": run.scheduler.get_last_lr()[0],
                       "logit_scale": round(float(run.model.logit_scale.detach().exp()), 3)})
    if cfg.validate_every and run.step % cfg.validate_every == 0 and run.step < total:
        validation.clear()
        validation.update(_validate(run, images, texts, val_idx, val_labels))
        _log(cfg.out, {"event": "validation", "step": run.step, **validation})
    if cfg.save_every and run.step % cfg.save_every == 0:
        _save(run)


def _setup_device(config: TrainConfig) -> tuple[torch.device, int, int]:
    if config.threads:
        torch.set_num_threads(config.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    wanted = config.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {config.device!r} asked for but CUDA is not available")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if wanted.startswith("cuda") else "gloo")
        if wanted.startswith("cuda"):
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            wanted = f"cuda:{local}"
    return torch.device(wanted), rank, world


def _training_texts(config: TrainConfig, reports: list[str]) -> tuple[list[str], dict]:
    if config.text_source == "column":
        return reports, {"column": len(reports)}
    texts, sources = [], {}
    for report in reports:
        extraction = extract_impression(report, config.impression_fallback)
        texts.append(extraction.text)
        sources[extraction.source] = sources.get(extraction.source, 0) + 1
    return texts, sources


def _split(n: int, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng([config.seed, 7]).permutation(n)
    n_val = min(round(n * config.val_fraction), config.val_max)
    if n - n_val < config.batch_size:
        raise ValueError(f"{n} pairs leave fewer than one batch of {config.batch_size} for training")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _sibling_labels(data: Path) -> Path | None:
    folder = data if data.is_dir() else data.parent
    candidate = folder / "labels.csv"
    return candidate if candidate.is_file() else None


def _make_run(config: TrainConfig, device: torch.device, rank: int, world: int) -> _Run:
    if config.init is not None:
        state = torch.load(config.init, map_location="cpu", weights_only=True)
        model = model_from_state_dict(state).train()
    else:
        model = build_model(config.architecture).train()
    model.to(device)
    ddp: torch.nn.Module = PairEncoder(model)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        ddp = DistributedDataParallel(ddp, device_ids=ids)
    optimizer = _optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    autocast_dtype = mixed_precision_dtype(config.amp, device)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    run = _Run(config, device, rank, world, model, ddp, optimizer, scheduler, scaler, autocast_dtype)
    if config.resume:
        _restore(run)
    return run


def mixed_precision_dtype(amp: bool, device: torch.device) -> torch.dtype | None:
    """float16 (with a gradient scaler) on CUDA; bfloat16 on a CPU with native bfloat16 matrix
    units (AVX512-BF16 or AMX), where it trains over twice as fast as float32; otherwise None,
    float32 throughout (emulated bfloat16 would be slower than float32)."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bfloat16() else None


def cpu_has_native_bfloat16() -> bool:
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def _optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    total = config.steps or 0

    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "cosine" and total:
            progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _batch_indices(config: TrainConfig, train_idx: np.ndarray, step: int, steps_per_epoch: int,
                   rank: int, world: int) -> np.ndarray:
    """A deterministic function of the step, so that a resumed run continues the same order."""
    epoch, within = divmod(step, steps_per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(train_idx)
    batch = order[within * config.batch_size:(within + 1) * config.batch_size]
    return batch[rank::world]


def _train_step(run: _Run, images: np.ndarray, texts: list[str], batch: np.ndarray,
                reports: list[str]) -> float:
    cfg = run.config
    rng = np.random.default_rng([cfg.seed, run.step, 11])
    pixels = torch.from_numpy(np.asarray(images[batch])).to(run.device)
    if cfg.augment:
        pixels = _augment(pixels, rng)
    x = model_input(pixels, input_size(run.model))
    batch_texts = [sample_sentences(texts[i], rng, cfg.sentence_sampling, cfg.sentence_max)
                   for i in batch]
    if cfg.focus_terms and rng.random() < cfg.focus_probability:
        term = cfg.focus_terms[int(rng.integers(len(cfg.focus_terms)))]
        batch_texts = [focus_sentence(reports[i], term, rng) or t for i, t in zip(batch, batch_texts)]
    tokens = tokenize_reports(batch_texts, run.model.context_length).to(run.device)
    with torch.autocast(run.device.type, dtype=run.autocast_dtype or torch.float32,
                        enabled=run.autocast_dtype is not None):
        loss = run.ddp(x, tokens)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.optimizer.step()
    run.scheduler.step()
    with torch.no_grad():
        run.model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return float(loss.detach())


class PairEncoder(torch.nn.Module):
    """Both encoders in one forward, so that DistributedDataParallel sees (and syncs) them."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        image_embeddings = self.model.encode_image(images)
        text_embeddings = encode_text_trimmed(self.model, tokens)
        # The similarities and the loss in float32 even under autocast: bfloat16 would round
        # logits near 14 to steps of 0.06.
        with torch.autocast(images.device.type, enabled=False):
            image_features = F.normalize(image_embeddings.float(), dim=-1)
            text_features = F.normalize(text_embeddings.float(), dim=-1)
            logits = self.model.logit_scale.exp() * image_features @ text_features.T
            target = torch.arange(len(images), device=images.device)
            # CheXzero's loss: (CE(logits_per_image) + CE(logits_per_text)) / 2
            return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def focus_sentence(report: str, term: str, rng: np.random.Generator) -> str | None:
    """One sentence of the report that mentions `term` (a text curriculum: a batch whose texts
    all speak of one finding can only be matched by seeing that finding), or None."""
    found = [s for s in sentences(report.replace("\n", " ")) if term in s.lower()]
    return found[int(rng.integers(len(found)))] if found else None


def encode_text_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`encode_text` over only as many positions as the longest text needs. With the causal mask
    a position never sees later ones, so the end-of-text features equal those of the padded
    77-token forward; training is several times faster on short impressions."""
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    pooled = x[torch.arange(len(tokens)), tokens.argmax(dim=-1)]
    return pooled @ model.text_projection


def _augment(pixels: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Small random shifts and zooms of the 320 image (positioning varies on real films)."""
    n = len(pixels)
    scale = torch.from_numpy(rng.uniform(0.93, 1.07, n)).float()
    shift = torch.from_numpy(rng.uniform(-0.05, 0.05, (n, 2))).float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(pixels.device), (n, 1, 320, 320), align_corners=False)
    out = F.grid_sample(pixels.float().unsqueeze(1), grid, mode="bilinear", align_corners=False)
    return out.squeeze(1)


BATCHNORM_REFRESH_BATCHES = 16


def refresh_batchnorm(run: _Run) -> None:
    """Recompute BatchNorm running statistics (a ResNet image tower's) as an exact average over
    training batches under the current weights ("precise BN"), before validating or exporting.
    The running averages kept during training trail the weights they were gathered under, and
    inference uses them: a model exported with them scores worse than it trains."""
    norms = [m for m in run.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms or run.batchnorm_step == run.step or run.train_images is None:
        return
    rng = np.random.default_rng([run.config.seed, run.step, 23])
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    size = min(run.config.batch_size, len(run.train_idx))
    with torch.no_grad(), torch.autocast(run.device.type, dtype=run.autocast_dtype or torch.float32,
                                         enabled=run.autocast_dtype is not None):
        for _ in range(BATCHNORM_REFRESH_BATCHES):
            batch = np.sort(rng.choice(run.train_idx, size=size, replace=False))
            pixels = torch.from_numpy(np.asarray(run.train_images[batch])).to(run.device)
            run.model.encode_image(model_input(pixels, input_size(run.model)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    run.batchnorm_step = run.step


@torch.no_grad()
def _validate(run: _Run, images: np.ndarray, texts: list[str], val_idx: np.ndarray,
              val_labels: dict) -> dict:
    if len(val_idx) < 2:
        return {}
    refresh_batchnorm(run)
    model = run.model.eval()
    size = input_size(model)
    context = model.context_length
    losses = []
    for start in range(0, len(val_idx), 64):
        chunk = val_idx[start:start + 64]
        if len(chunk) < 2:
            continue
        x = model_input(torch.from_numpy(np.asarray(images[chunk])).to(run.device), size)
        tokens = tokenize_reports([texts[i] for i in chunk], context).to(run.device)
        losses.append(float(PairEncoder(model)(x, tokens)))
    out: dict = {"val_loss": round(float(np.mean(losses)), 5)} if losses else {}
    if val_labels:
        labels = [name for name in SYNTH_FINDINGS if name in val_labels]
        prompts = default_prompts(labels)
        feats = image_features(model, images[val_idx], size, run.device)
        scores = prompt_pair_scores(model, feats, prompts, context)
        out["auroc"] = {k: round(v, 4) for k, v in auroc_table(scores, prompts, val_labels).items()}
    model.train()
    return out


def _save(run: _Run) -> None:
    refresh_batchnorm(run)
    out = run.config.out
    out.mkdir(parents=True, exist_ok=True)
    state = openai_state_dict(run.model)
    if run.config.half_export:
        state = {k: v.half() if v.is_floating_point() and k != "logit_scale" else v
                 for k, v in state.items()}
    _atomic_save(state, out / "checkpoint.pt")
    _atomic_save({
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict() if run.scaler else None,
        "step": run.step,
        "config": run.config.as_json(),
    }, out / "training-state.pt")


def _restore(run: _Run) -> None:
    path = run.config.out / "training-state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"nothing to resume: {path} does not exist")
    state = torch.load(path, map_location=run.device, weights_only=True)
    _check_same_run(state.get("config") or {}, run.config.as_json())
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.step = int(state["step"])


# Options that may change between a run and its resumption (steps/epochs: train for longer);
# every other one defines the run.
RESUMABLE_CHANGES = frozenset(
    {"resume", "stop_at", "steps", "epochs", "init", "device", "threads", "validate_every",
     "save_every", "out"}
)


def _check_same_run(saved: dict, requested: dict) -> None:
    """Resuming with other options would silently train a different run (or fail deep inside
    the optimizer): name what differs instead."""
    differing = sorted(
        key
        for key in saved.keys() | requested.keys()
        if key not in RESUMABLE_CHANGES and _jsonish(saved.get(key)) != _jsonish(requested.get(key))
    )
    if differing:
        shown = ", ".join(f"{k}={saved.get(k)!r} (now {requested.get(k)!r})" for k in differing)
        raise ValueError(
            f"cannot resume: the saved run used other options: {shown}; pass the same options "
            "or train into a new --out"
        )


def _jsonish(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


def _atomic_save(obj: object, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    partial.replace(path)


def _log(out: Path, record: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "log.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
