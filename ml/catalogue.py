"""The findings catalogue: which findings are scored, with which prompt pair, coded how.

One `[[finding]]` table per finding in a TOML file (`dicom_node/shipped/config/findings.toml`
ships the 14 CheXpert findings). Adding a finding is adding a table; nothing in code lists
findings. The file is validated completely on load and every error names the entry and the key.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# p = sigmoid(cos_pos - cos_neg) with cosines in [-1, 1]: these are the reachable extremes.
MIN_PROBABILITY = 1.0 / (1.0 + math.exp(2.0))
MAX_PROBABILITY = 1.0 / (1.0 + math.exp(-2.0))

_REQUIRED = ("label", "code", "default_threshold")
_PROMPTS = ("positive_prompt", "negative_prompt")
_OPTIONAL = ("site", "enabled", "note", "derived")
_CODE_KEYS = ("value", "scheme", "meaning")
# How a derived finding's score is computed from the scores of the prompt-scored findings that
# are enabled beside it, per image (or per study, after aggregation).
COMPLEMENT_OF_MAX = "1 - max"
DERIVATIONS = {
    COMPLEMENT_OF_MAX: "derived: 1 - the highest score among the enabled findings (no prompt pair)",
}


class CatalogueError(ValueError):
    """The findings file is unreadable or an entry is invalid; the message names entry and key."""


@dataclass(frozen=True)
class Finding:
    label: str
    positive_prompt: str
    negative_prompt: str
    code_value: str
    code_scheme: str
    code_meaning: str
    site_value: str | None
    site_scheme: str | None
    site_meaning: str | None
    default_threshold: float
    enabled: bool
    note: str | None = None  # why it is disabled, how it was validated, ...
    derived: str | None = None  # None: scored by its prompt pair; else a key of DERIVATIONS

    @property
    def derivation(self) -> str | None:
        """How a derived finding's score is made, in words (None for a prompt-scored one)."""
        return DERIVATIONS[self.derived] if self.derived else None


@dataclass(frozen=True)
class Catalogue:
    findings: tuple[Finding, ...]
    source: str = ""

    def enabled(self) -> tuple[Finding, ...]:
        """Enabled findings in catalogue order (prompt-scored and derived)."""
        return tuple(f for f in self.findings if f.enabled)

    def prompted(self) -> tuple[Finding, ...]:
        """Enabled findings scored by their own prompt pair (what a model must have learned)."""
        return tuple(f for f in self.findings if f.enabled and not f.derived)

    def derived(self) -> tuple[Finding, ...]:
        """Enabled findings whose score is derived from the prompt-scored ones."""
        return tuple(f for f in self.findings if f.enabled and f.derived)

    def by_label(self, label: str) -> Finding:
        for finding in self.findings:
            if finding.label == label:
                return finding
        raise KeyError(f"no finding labelled {label!r} in the catalogue {self.source}")

    @property
    def version(self) -> str:
        """Short hash of the content (not of comments or layout): changes when any entry does."""
        # note and derived only when set: catalogues written before they existed keep their version
        entries = [
            {k: v for k, v in asdict(f).items() if v is not None or k not in ("note", "derived")}
            for f in self.findings
        ]
        canonical = json.dumps(entries, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def load_catalogue(path: str | Path) -> Catalogue:
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise CatalogueError(f"findings file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"findings file {path} is not valid TOML: {exc}") from None
    return parse_catalogue(data, source=str(path))


def parse_catalogue(data: Mapping[str, Any], source: str = "<memory>") -> Catalogue:
    unknown = sorted(set(data) - {"finding"})
    if unknown:
        raise CatalogueError(
            f"{source}: unknown top-level key {unknown[0]!r} (expected [[finding]] tables only)"
        )
    entries = data.get("finding", [])
    if not isinstance(entries, list) or not entries:
        raise CatalogueError(f"{source}: expected at least one [[finding]] table")
    findings: list[Finding] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries, start=1):
        finding = _parse_entry(entry, f"{source}: finding #{index}")
        key = finding.label.casefold()
        if key in seen:
            raise CatalogueError(
                f"{source}: finding #{index} ({finding.label!r}): duplicate label, "
                f"already used by finding #{seen[key]}"
            )
        seen[key] = index
        findings.append(finding)
    return Catalogue(findings=tuple(findings), source=source)


def _parse_entry(entry: Any, where: str) -> Finding:
    if not isinstance(entry, Mapping):
        raise CatalogueError(f"{where}: must be a table")
    if isinstance(entry.get("label"), str):
        where = f"{where} ({entry['label']!r})"
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_PROMPTS) - set(_OPTIONAL))
    if unknown:
        known = ", ".join(_REQUIRED + _PROMPTS + _OPTIONAL)
        raise CatalogueError(f"{where}: unknown key {unknown[0]!r} (known: {known})")
    derived = entry.get("derived")
    if derived is not None and derived not in DERIVATIONS:
        raise CatalogueError(
            f"{where}: key 'derived' = {derived!r} is not a known derivation "
            f"(known: {', '.join(repr(k) for k in DERIVATIONS)})"
        )
    needed = _REQUIRED if derived else _REQUIRED + _PROMPTS
    missing = [k for k in needed if k not in entry]
    if missing:
        raise CatalogueError(f"{where}: missing key {missing[0]!r}")
    if derived and any(k in entry for k in _PROMPTS):
        raise CatalogueError(f"{where}: a derived finding has no prompt pair; remove "
                             "positive_prompt and negative_prompt")
    label = _text(entry, "label", where)
    code = _code(entry["code"], f"{where}: code")
    site = _code(entry["site"], f"{where}: site") if "site" in entry else (None, None, None)
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise CatalogueError(f"{where}: key 'enabled' must be true or false, got {enabled!r}")
    return Finding(
        label=label,
        positive_prompt="" if derived else _text(entry, "positive_prompt", where),
        negative_prompt="" if derived else _text(entry, "negative_prompt", where),
        code_value=code[0],
        code_scheme=code[1],
        code_meaning=code[2],
        site_value=site[0],
        site_scheme=site[1],
        site_meaning=site[2],
        default_threshold=_threshold(entry["default_threshold"], where),
        enabled=enabled,
        note=_text(entry, "note", where) if "note" in entry else None,
        derived=derived,
    )


def apply_derived(scores: np.ndarray, labels: Sequence[str], catalogue: Catalogue) -> np.ndarray:
    """(N, L) scores whose columns are `labels` -> a copy with every derived finding's column
    recomputed from the prompt-scored columns of the same row ("1 - max": 1 minus the highest
    of them). Call it again after aggregating images to a study, so that the study's derived
    score follows the study's scores. Raises ValueError when a derived finding has no
    prompt-scored column to derive from."""
    out = np.array(scores, dtype=np.float64, copy=True)
    derived = {f.label for f in catalogue.findings if f.derived}
    prompted = [i for i, label in enumerate(labels) if label not in derived]
    targets = [i for i, label in enumerate(labels) if label in derived]
    if not targets:
        return out
    if not prompted:
        raise ValueError("a derived finding needs at least one enabled prompt-scored finding")
    for i in targets:  # only one derivation exists so far: COMPLEMENT_OF_MAX
        out[:, i] = 1.0 - out[:, prompted].max(axis=1)
    return out


def _text(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry[key]
    if not isinstance(value, str) or not value.strip():
        raise CatalogueError(f"{where}: key {key!r} must be a non-empty string, got {value!r}")
    return value


def _code(value: Any, where: str) -> tuple[str, str, str]:
    if not isinstance(value, Mapping):
        raise CatalogueError(f"{where}: must be a table {{ value, scheme, meaning }}")
    unknown = sorted(set(value) - set(_CODE_KEYS))
    if unknown:
        raise CatalogueError(f"{where}: unknown key {unknown[0]!r} (known: value, scheme, meaning)")
    for key in _CODE_KEYS:
        if not isinstance(value.get(key), str) or not value[key].strip():
            raise CatalogueError(f"{where}: key {key!r} must be a non-empty string")
    return value["value"], value["scheme"], value["meaning"]


def _threshold(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CatalogueError(f"{where}: key 'default_threshold' must be a number, got {value!r}")
    if not MIN_PROBABILITY < value < MAX_PROBABILITY:
        raise CatalogueError(
            f"{where}: key 'default_threshold' = {value} can never be crossed: zero-shot "
            f"probabilities lie in [{MIN_PROBABILITY:.3f}, {MAX_PROBABILITY:.3f}]"
        )
    return float(value)
