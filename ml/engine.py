"""Zero-shot scoring: CheXzero's positive-vs-negative prompt softmax over an ensemble.

For each finding, p = exp(cos(img, pos)) / (exp(cos(img, pos)) + exp(cos(img, neg))) with
L2-normalised features and raw cosines (no logit scale), averaged over checkpoints as
probabilities. Text embeddings are computed once per (checkpoint SHA-256, prompt). Images are
decoded and brought to the 320 canvas in a thread pool while the model scores the previous
batch (torch, Pillow and numpy release the GIL for the heavy parts), so the pipeline runs close
to the model's own rate on uncompressed input.

On CUDA the image tower runs under float16 autocast by default (`precision="auto"`). Emulated
with CPU float16 autocast on a random ViT-B/32 (no GPU was available to measure on), it moved
probabilities by at most 1.7e-5 against float32; bfloat16 moved them 2.3e-4 and is not used.
`precision="float32"` keeps full precision on CUDA too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
import torch
from open_clip.model import CLIP

from ml.catalogue import Catalogue, Finding, apply_derived
from ml.checkpoint import LoadedCheckpoint, load_checkpoint
from ml.dicom_image import Conversion
from ml.prepare import PreparedImage, Preparer
from ml.preprocess import CANVAS, ImageShapeError, canvases_to_input, to_canvas
from ml.tokenizer import tokenize

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "float16")


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    checkpoint_sha256s: tuple[str, ...]


@dataclass(frozen=True)
class ImageScore:
    path: str
    probabilities: dict[str, float] | None
    skipped_reason: str | None
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class EmbeddedScores:
    """Probabilities and the image embeddings they came from, for a batch of N images.

    `embeddings` maps each distinct checkpoint SHA-256 to its (N, D) float32 L2-normalised
    image features (D = the checkpoint's embed_dim, 512 for released CheXzero weights); with
    `zero_shot_probabilities` and that checkpoint's prompt embeddings they give back the
    probabilities, so a new prompt pair needs no new image pass.

    `local_features`, when asked for, maps each distinct SHA-256 to its (N, g, g, D) float32
    L2-normalised local image embeddings from the same forward pass (`ml.heatmap`; g = 7 for
    ViT-B/32 and RN50 at 224 px): `ZeroShotEngine.maps_from_local` makes the attention maps
    from them without running the image tower again. Empty when not asked for."""

    probabilities: np.ndarray  # (N, L) float64, L = the engine's labels (derived included)
    embeddings: dict[str, np.ndarray]
    local_features: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def stack(cls, parts: Sequence[EmbeddedScores]) -> EmbeddedScores:
        """The parts' images one after the other: probabilities (as float64) and each
        checkpoint's arrays stacked along the image axis. `parts` must not be empty."""
        return cls(
            np.concatenate([np.asarray(p.probabilities, dtype=np.float64) for p in parts]),
            _stack_by_checkpoint([p.embeddings for p in parts]),
            _stack_by_checkpoint([p.local_features for p in parts]),
        )

    def rows(self, rows: slice, *, local_features: bool = True) -> EmbeddedScores:
        """These images only (views, not copies); without `local_features` they are dropped."""
        kept = self.local_features if local_features else {}
        return EmbeddedScores(
            np.asarray(self.probabilities)[rows],
            {sha: array[rows] for sha, array in self.embeddings.items()},
            {sha: array[rows] for sha, array in kept.items()},
        )


def _stack_by_checkpoint(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {sha: np.concatenate([part[sha] for part in parts]) for sha in parts[0]}


def zero_shot_probabilities(
    image_features: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    """(N, F) float64 probabilities from (N, D) L2-normalised image features and (F, D)
    L2-normalised positive and negative prompt embeddings: CheXzero steps 12-13, raw cosines
    (no logit scale), softmax over the (positive, negative) pair = sigmoid(pos - neg).
    The engine and the prompt workbench both score with this one function."""
    positive_cos = (image_features @ positive.T).double().cpu()
    negative_cos = (image_features @ negative.T).double().cpu()
    return torch.sigmoid(positive_cos - negative_cos)


def encode_prompts(
    checkpoint_paths: Sequence[str | Path], prompts: Sequence[str], device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Each distinct checkpoint's (len(prompts), D) L2-normalised float32 prompt embeddings,
    keyed by the checkpoint file's SHA-256 (one text pass per checkpoint; the image tower is
    loaded but not run). Raises ml.checkpoint's errors for a missing or unreadable file and
    ValueError for a prompt longer than the 77-token context."""
    resolved = resolve_device(device)
    out: dict[str, torch.Tensor] = {}
    for path in checkpoint_paths:
        checkpoint = load_checkpoint(path)
        if checkpoint.sha256 in out:
            continue
        checkpoint.model.to(resolved)
        context = checkpoint.architecture.context_length
        out[checkpoint.sha256] = build_text_classifier(
            checkpoint.model, list(prompts), context, resolved
        ).cpu()
    return out


@dataclass
class _Member:
    sha256: str
    model: CLIP
    image_size: int
    text: torch.Tensor = field(repr=False)  # (2F, D): positive prompts, then negative prompts


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available here")
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return resolved


def build_text_classifier(
    model: CLIP, prompts: Sequence[str], context_length: int, device: torch.device
) -> torch.Tensor:
    """(len(prompts), D) L2-normalised text embeddings in float32 (CheXzero step 11)."""
    tokens = tokenize(prompts, context_length).to(device)
    with torch.inference_mode():
        features = model.encode_text(tokens).float()
    features = features / features.norm(dim=-1, keepdim=True)
    # CheXzero averages over templates, then normalises again; with one template per prompt
    # the mean is the embedding itself.
    return features / features.norm(dim=-1, keepdim=True)


class ZeroShotEngine:
    """Loads the checkpoints once; scores arrays, canvases or files."""

    def __init__(
        self,
        checkpoint_paths: Sequence[str | Path],
        catalogue: Catalogue,
        device: str = "auto",
        cpu_threads: int = 0,
        batch_size: int = 16,
        *,
        name: str | None = None,
        precision: str = "auto",
        prepare_workers: int | None = None,
        prepare_mode: str = "threads",
        prepare_reduced: bool = False,
    ) -> None:
        if not checkpoint_paths:
            raise ValueError("no checkpoint given: a model needs at least one checkpoint file")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.catalogue = catalogue
        # Scored by prompt pairs; `labels` (the output columns) are all enabled findings in
        # catalogue order, derived ones (No Finding) computed from the prompt-scored columns.
        self.findings: tuple[Finding, ...] = catalogue.prompted()
        if not self.findings:
            raise ValueError(
                f"the findings catalogue {catalogue.source} enables no prompt-scored finding"
            )
        self.labels: tuple[str, ...] = tuple(f.label for f in catalogue.enabled())
        self._columns = [self.labels.index(f.label) for f in self.findings]
        self.device = resolve_device(device)
        self.precision = _resolve_precision(precision, self.device)
        if self.device.type == "cpu" and cpu_threads > 0:
            torch.set_num_threads(cpu_threads)
        self.batch_size = batch_size
        self.preparer = Preparer(prepare_mode, prepare_workers, reduced=prepare_reduced)
        self._text_cache: dict[tuple[str, str], torch.Tensor] = {}
        self._members = self._load_members(checkpoint_paths)
        shas = tuple(m.sha256 for m in self._members)
        self.identity = ModelIdentity(
            name=name or _default_name(checkpoint_paths), checkpoint_sha256s=shas
        )
        log.info(
            "zero-shot engine ready",
            extra={
                "model": self.identity.name,
                "checkpoints": list(shas),
                "device": str(self.device),
                "precision": self.precision,
                "findings": len(self.labels),
                "catalogue_version": catalogue.version,
            },
        )

    # --- construction ------------------------------------------------------------------

    def _load_members(self, paths: Sequence[str | Path]) -> list[_Member]:
        loaded: dict[str, LoadedCheckpoint] = {}
        members = []
        for path in paths:
            checkpoint = load_checkpoint(path)
            if checkpoint.sha256 in loaded:  # same bytes twice: share the model, keep both votes
                checkpoint = loaded[checkpoint.sha256]
            else:
                checkpoint.model.to(self.device)
                loaded[checkpoint.sha256] = checkpoint
            members.append(
                _Member(
                    sha256=checkpoint.sha256,
                    model=checkpoint.model,
                    image_size=checkpoint.architecture.image_size,
                    text=self._text_features(checkpoint),
                )
            )
        return members

    def _text_features(self, checkpoint: LoadedCheckpoint) -> torch.Tensor:
        prompts = [f.positive_prompt for f in self.findings] + [
            f.negative_prompt for f in self.findings
        ]
        cache = self._text_cache
        missing = [p for p in dict.fromkeys(prompts) if (checkpoint.sha256, p) not in cache]
        if missing:
            context = checkpoint.architecture.context_length
            features = build_text_classifier(checkpoint.model, missing, context, self.device)
            for prompt, row in zip(missing, features, strict=True):
                self._text_cache[(checkpoint.sha256, prompt)] = row
        return torch.stack([self._text_cache[(checkpoint.sha256, p)] for p in prompts])

    # --- scoring -----------------------------------------------------------------------

    def score_uint8(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, F) probabilities for 8-bit grayscale images, F = enabled findings in order."""
        if len(images) == 0:
            return np.zeros((0, len(self.labels)))
        canvases = np.stack([to_canvas(image) for image in images])
        return self.score_canvases(canvases)

    def score_uint8_with_embeddings(
        self, images: Sequence[np.ndarray], *, local_features: bool = False
    ) -> EmbeddedScores:
        """`score_uint8` plus each checkpoint's image embeddings and, with `local_features`,
        its local features for attention maps (see EmbeddedScores); the scores are the same
        either way, bit for bit."""
        if len(images) == 0:
            return EmbeddedScores(np.zeros((0, len(self.labels))), {})
        canvases = np.stack([to_canvas(image) for image in images])
        return self._score_all(canvases, local_features)

    def score_canvases(self, canvases: np.ndarray) -> np.ndarray:
        """(N, L) scores for (N, 320, 320) uint8 canvases (step A already done), L = `labels`."""
        return self._score_all(canvases).probabilities

    def _score_all(self, canvases: np.ndarray, local: bool = False) -> EmbeddedScores:
        if canvases.ndim != 3 or canvases.shape[1:] != (CANVAS, CANVAS):
            raise ImageShapeError(
                f"expected (N, {CANVAS}, {CANVAS}) canvases, got {canvases.shape}"
            )
        batches = []
        for start in range(0, len(canvases), self.batch_size):
            chunk = np.ascontiguousarray(canvases[start : start + self.batch_size])
            batch = torch.from_numpy(chunk)
            batches.append(self._score_batch(batch.to(self.device), local))
        if not batches:
            return EmbeddedScores(np.zeros((0, len(self.labels))), {})
        stacked = EmbeddedScores.stack(batches)
        scores = np.zeros((len(stacked.probabilities), len(self.labels)))
        scores[:, self._columns] = stacked.probabilities
        return dataclasses.replace(
            stacked, probabilities=apply_derived(scores, self.labels, self.catalogue))

    def heat_maps(self, canvases: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """(N, 320, 320) uint8 canvases -> (N, len(labels), 320, 320) float32 maps of where
        each image matches the finding's positive prompt more than its negative one
        (`ml.heatmap`: local scores in [0.119, 0.881], the ensemble's mean). Runs the image
        towers; images just scored with `local_features=True` need not (`maps_from_local`).
        `labels`: prompt-scored findings of this engine; a derived or unknown one raises
        ValueError."""
        from ml.heatmap import local_features

        self._prompt_rows(labels)  # unknown labels fail before the forward pass
        batch = torch.from_numpy(np.ascontiguousarray(canvases)).to(self.device)
        local: dict[str, torch.Tensor] = {}
        for member in self._members:
            if member.sha256 not in local:
                pixels = canvases_to_input(batch, member.image_size)
                with torch.inference_mode(), self._precision_context():
                    local[member.sha256] = local_features(member.model, pixels).float()
        return self.maps_from_local(local, labels)

    def maps_from_local(
        self, local_features: Mapping[str, np.ndarray | torch.Tensor], labels: Sequence[str]
    ) -> np.ndarray:
        """The maps of `heat_maps` from kept local features: `local_features` as in
        EmbeddedScores (each checkpoint's (N, g, g, D), rows sliced as needed) ->
        (N, len(labels), 320, 320) float32. Raises ValueError for a derived or unknown label
        and KeyError for a checkpoint of this engine with no local features given."""
        from ml.heatmap import ensemble_maps

        rows = self._prompt_rows(labels)
        count = len(self.findings)
        members = []
        for member in self._members:
            local = torch.as_tensor(local_features[member.sha256], device=self.device)
            positive = member.text[rows]
            negative = member.text[[count + r for r in rows]]
            members.append((local, positive, negative))
        with torch.inference_mode():
            return ensemble_maps(members).numpy()

    def _prompt_rows(self, labels: Sequence[str]) -> list[int]:
        index = {f.label: i for i, f in enumerate(self.findings)}
        unknown = [label for label in labels if label not in index]
        if unknown:
            raise ValueError(f"labels: no prompt pair scored for {unknown} (derived or not enabled)")
        return [index[label] for label in labels]

    def _score_batch(self, canvases: torch.Tensor, local: bool = False) -> EmbeddedScores:
        """Scores of the prompt-scored findings (N, len(findings)), the image embeddings and,
        with `local`, the local features."""
        total = torch.zeros(len(canvases), len(self.findings), dtype=torch.float64)
        inputs: dict[int, torch.Tensor] = {}
        embeddings: dict[str, torch.Tensor] = {}
        locals_: dict[str, torch.Tensor] = {}
        count = len(self.findings)
        for member in self._members:
            if member.image_size not in inputs:
                inputs[member.image_size] = canvases_to_input(canvases, member.image_size)
            if member.sha256 not in embeddings:  # same bytes twice: one pass, both votes
                features, spatial = self._member_features(
                    member, inputs[member.image_size], local)
                embeddings[member.sha256] = features
                if spatial is not None:
                    locals_[member.sha256] = spatial
            features = embeddings[member.sha256]
            positive, negative = member.text[:count], member.text[count:]
            total += zero_shot_probabilities(features, positive, negative)
        return EmbeddedScores(
            (total / len(self._members)).numpy(),
            {sha: f.cpu().numpy() for sha, f in embeddings.items()},
            {sha: f.cpu().numpy() for sha, f in locals_.items()},
        )

    def _member_features(
        self, member: _Member, pixels: torch.Tensor, local: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N, D) float32 L2-normalised image features (CheXzero step 12) and, with `local`,
        the (N, g, g, D) float32 local features of the same pass (else None)."""
        from ml.heatmap import SpatialCapture, project_local

        spatial = None
        with torch.inference_mode(), self._precision_context():
            if local:
                with SpatialCapture(member.model) as capture:
                    features = member.model.encode_image(pixels)
                (output,) = capture.outputs
                spatial = project_local(member.model.visual, output).float()
            else:
                features = member.model.encode_image(pixels)
        features = features.float()
        return features / features.norm(dim=-1, keepdim=True), spatial

    def _precision_context(self) -> AbstractContextManager[object]:
        """float16: autocast (matmuls and convolutions in half; LayerNorm, softmax and the
        scoring stay float32). float32 on CUDA: no TF32 in cuDNN, whose default would round
        the patch embedding to 10 bits."""
        if self.precision == "float16":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        if self.device.type == "cuda":
            cudnn = torch.backends.cudnn
            return cudnn.flags(
                enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                deterministic=cudnn.deterministic, allow_tf32=False,
            )
        return nullcontext()

    def score_paths(
        self,
        paths: Sequence[str | Path],
        conversion: Conversion = "equalize",
        on_result: Callable[[ImageScore], None] | None = None,
    ) -> list[ImageScore]:
        """Score files (DICOM, PNG, JPEG) in order; ineligible or unreadable ones say why.

        Files are prepared by the engine's `preparer` (threads or processes, kept between
        calls until `close()`) while the model scores the batch before.
        """
        results: list[ImageScore] = []
        prepared = self.preparer.in_order(paths, conversion, ahead=2 * self.batch_size)
        for chunk in _chunks(prepared, self.batch_size):
            for score in self._score_prepared(chunk):
                results.append(score)
                if on_result is not None:
                    on_result(score)
        return results

    def close(self) -> None:
        """Stop the preparation workers (the engine stays usable; they restart on demand)."""
        self.preparer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _score_prepared(self, chunk: list[PreparedImage]) -> list[ImageScore]:
        ready = [i for i, item in enumerate(chunk) if item.canvas is not None]
        rows: dict[int, np.ndarray] = {}
        if ready:
            probabilities = self.score_canvases(np.stack([chunk[i].canvas for i in ready]))
            rows = dict(zip(ready, probabilities, strict=True))
        scores = []
        for i, item in enumerate(chunk):
            mapping = None
            if i in rows:
                mapping = dict(zip(self.labels, map(float, rows[i]), strict=True))
            scores.append(ImageScore(item.path, mapping, item.skipped_reason, item.flags))
        return scores


def _chunks(items: Iterator[PreparedImage], size: int) -> Iterator[list[PreparedImage]]:
    chunk: list[PreparedImage] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "float16" if device.type == "cuda" else "float32"
    if precision == "float16" and device.type != "cuda":
        raise ValueError("precision float16 needs a CUDA device")
    return precision


def _default_name(paths: Sequence[str | Path]) -> str:
    stems = [Path(p).stem for p in paths]
    return stems[0] if len(stems) == 1 else f"ensemble({', '.join(stems)})"
