"""Training configuration. The defaults are CheXzero's (`run_train.py`: batch size 16, 4 epochs,
SGD with lr 1e-4 and momentum 0.9, context length 77, a checkpoint every 100 batches); every
value can be changed from `dicom-node train`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ml.architecture import ClipArchitecture

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")
TEXT_SOURCES = ("impression", "column")

# A small CLIP that fits 20 MB in half precision and trains on a CPU. Its image tower is
# OpenAI's modified ResNet (the RN50 family) at stem width 16, one block per stage (1.4 M
# parameters): on the synthetic phantoms a supervised probe of it separated pneumothorax and
# support devices (AUROC > 0.97) within 50 batches, where the 6-layer ViT/32 of
# demo-synthetic-v1 was near 0.6 after 150, so the convolutional tower is what makes a
# CPU-trained demo feasible. The token embedding (49408 x text width) dominates the size.
DEMO_ARCHITECTURE = ClipArchitecture(
    embed_dim=128, image_size=224, patch_size=32, vision_width=16, vision_layers=4,
    text_width=128, text_layers=4, context_length=77, vocab_size=49408, resnet_layers=(1, 1, 1, 1),
)
# demo-synthetic-v1's shape (ViT/32, 6 layers of width 256; text width 64).
DEMO_VIT_ARCHITECTURE = ClipArchitecture(
    embed_dim=128, image_size=224, patch_size=32, vision_width=256, vision_layers=6,
    text_width=64, text_layers=4, context_length=77, vocab_size=49408,
)
PRESETS = {"demo": DEMO_ARCHITECTURE, "demo-vit": DEMO_VIT_ARCHITECTURE}


@dataclass
class TrainConfig:
    data: Path
    out: Path
    init: Path | None = None
    architecture: ClipArchitecture = field(default_factory=lambda: DEMO_ARCHITECTURE)
    epochs: int = 4
    steps: int | None = None  # overrides epochs when set
    stop_at: int | None = None  # end (and save) at this step of the schedule; resume goes on
    batch_size: int = 16
    lr: float = 1e-4
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    seed: int = 1234
    text_source: str = "impression"
    text_column: str | None = None
    image_column: str | None = None
    impression_fallback: str = "findings"
    sentence_sampling: float = 0.0
    sentence_max: int = 3
    focus_terms: tuple[str, ...] = ()
    focus_probability: float = 0.0
    augment: bool = False
    val_fraction: float = 0.05
    val_max: int = 512
    validate_every: int = 100
    save_every: int = 100
    labels_csv: Path | None = None
    conversion: str = "equalize"
    device: str = "auto"
    threads: int = 0
    amp: bool = True
    half_export: bool = False
    resume: bool = False

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}")
        if self.text_source not in TEXT_SOURCES:
            raise ValueError(f"text source must be one of {', '.join(TEXT_SOURCES)}")
        if self.text_source == "column" and not self.text_column:
            raise ValueError("--text-column is required when the text source is a column")
        if self.batch_size < 2:
            raise ValueError("batch size must be at least 2 (the contrastive loss needs pairs)")
        if self.lr <= 0:
            raise ValueError("learning rate must be positive")
        if not 0 <= self.sentence_sampling <= 1:
            raise ValueError("sentence sampling must be a probability (0..1)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("validation fraction must be in [0, 1)")
        if self.steps is not None and self.steps < 1:
            raise ValueError("--steps must be at least 1")
        if self.sentence_max < 1:
            raise ValueError("--sentence-max must be at least 1")
        if self.stop_at is not None and self.stop_at < 1:
            raise ValueError("--stop-at must be at least 1")
        if self.epochs < 1:
            raise ValueError("--epochs must be at least 1")

    def as_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, ClipArchitecture):
                value = value.as_dict()
            out[f.name] = value
        return out


def architecture_from_text(text: str) -> ClipArchitecture:
    """A preset name ("demo", "demo-vit"), or `key=value,...` over ClipArchitecture's fields
    (e.g. "vision_width=256,vision_layers=6"; resnet_layers as 1-1-1-1, 0 for a ViT), the
    other fields keeping the demo architecture's values."""
    text = text.strip()
    if text in PRESETS or not text:
        return PRESETS[text or "demo"]
    values = asdict(DEMO_ARCHITECTURE)
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if key not in values:
            raise ValueError(f"unknown architecture field {key!r}; one of {', '.join(values)}")
        values[key] = _architecture_value(key, value.strip())
    return ClipArchitecture(**values)


def _architecture_value(key: str, value: str) -> int | tuple[int, ...]:
    try:
        if key == "resnet_layers":
            stages = tuple(int(n) for n in value.split("-")) if value != "0" else ()
            if stages and (len(stages) != 4 or min(stages) < 1):
                raise ValueError
            return stages
        return int(value)
    except ValueError:
        wanted = "four block counts such as 1-1-1-1, or 0" if key == "resnet_layers" else "an integer"
        raise ValueError(f"architecture field {key} needs {wanted}, got {value!r}") from None


def dump(config: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(config.as_json(), indent=2) + "\n")
