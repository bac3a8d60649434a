"""Model cards: a small TOML file beside each checkpoint saying what the weights are cleared for.

`<checkpoint>.card.toml` (for `x.pt`: `x.card.toml` in the same folder), keys so far:

    name = "demo-synthetic-v2"
    sha256 = "98a5..."        # the checkpoint file's SHA-256: the card speaks for these weights only
    clinical_use = false      # true only for a model cleared for clinical use
    clearance = ""            # what clears it (e.g. a regulatory reference); required when true

    findings = ["Cardiomegaly", ...]  # the catalogue labels the weights were trained on

With clinical_use = false, `clearance` says why not (the shipped demo model's card does); status
and the start-up log quote it. `findings` lists the findings the checkpoint learned (catalogue
labels, compared without regard to case); a card without it makes no claim either way (the
released CheXzero weights come without a card). Unknown keys are kept and ignored here.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The demo checkpoints this project ships (trained on synthetic phantoms): never clinical.
DEMO_CHECKPOINT_SHA256 = frozenset({
    "98a57d6d9416704966b273be83dc27f29ad2f8abe01f49317efc4e002e8ef6df",  # demo-synthetic-v2.pt
})
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ModelCard:
    path: Path
    values: dict[str, Any]

    @property
    def clinical_use(self) -> bool:
        return self.values.get("clinical_use") is True

    @property
    def sha256(self) -> str:
        return str(self.values.get("sha256", "")).lower()

    @property
    def clearance(self) -> str:
        return str(self.values.get("clearance", "")).strip()

    @property
    def findings(self) -> tuple[str, ...] | None:
        """The findings the weights were trained on, or None when the card does not say.
        Raises ValueError when `findings` is not a list of strings."""
        value = self.values.get("findings")
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"model card {self.path}: key 'findings' must be a list of labels")
        return tuple(value)


def card_path(checkpoint: Path) -> Path:
    """Where the card of `checkpoint` lives: same folder, suffix replaced by `.card.toml`."""
    return checkpoint.with_suffix(".card.toml")


def read_card(checkpoint: Path) -> ModelCard | None:
    """The card beside `checkpoint`, or None if there is none. Raises ValueError if it is not
    valid TOML."""
    path = card_path(checkpoint)
    if not path.is_file():
        return None
    try:
        return ModelCard(path, tomllib.loads(path.read_text(encoding="utf-8")))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"model card {path} is not valid TOML: {exc}") from None


def card_statement(checkpoint: Path) -> str:
    """One line saying what the card beside `checkpoint` says about clinical use, for `status`
    and the start-up log, e.g. "not for clinical use (x.card.toml: none: demo model ...)".
    Reads only the card (no hash), never raises."""
    try:
        card = read_card(checkpoint)
    except (ValueError, OSError) as exc:
        return f"not for clinical use (model card unreadable: {exc})"
    if card is None:
        return f"not for clinical use (no model card {card_path(checkpoint).name})"
    verdict = "card says cleared for clinical use" if card.clinical_use and card.clearance \
        else "not for clinical use"
    return f"{verdict} ({card.path.name}: {card.clearance or 'no clearance given'})"


def untrained_findings(checkpoint: Path, labels: Sequence[str]) -> tuple[list[str], ModelCard | None]:
    """Of `labels` (prompt-scored findings to enable), those the model card beside `checkpoint`
    says it was not trained on, and the card. ([], None) without a card; ([], card) when the
    card lists no findings. Raises ValueError for a card that is not valid TOML or whose
    `findings` is not a list of strings."""
    card = read_card(checkpoint)
    trained = card.findings if card is not None else None
    if trained is None:
        return [], card
    known = {label.casefold() for label in trained}
    return [label for label in labels if label.casefold() not in known], card


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex. Raises OSError if it cannot be read."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def clinical_use_refusal(checkpoint: Path, sha256: str) -> str | None:
    """Why `checkpoint` (whose SHA-256 is `sha256`) may not be used clinically, or None."""
    if sha256 in DEMO_CHECKPOINT_SHA256:
        return "is the shipped demo model (trained on synthetic phantoms)"
    card = read_card(checkpoint)
    if card is None:
        return f"has no model card ({card_path(checkpoint).name})"
    if not card.clinical_use or not card.clearance:
        why = f" ({card.clearance})" if card.clearance else ""
        return f"its model card {card.path.name} does not clear it for clinical use{why}"
    if card.sha256 != sha256:
        return f"its model card {card.path.name} is for other weights (sha256 differs)"
    return None
