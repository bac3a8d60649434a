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
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# p = sigmoid(cos_pos - cos_neg) with cosines in [-1, 1]: these are the reachable extremes.
MIN_PROBABILITY = 1.0 / (1.0 + math.exp(2.0))
MAX_PROBABILITY = 1.0 / (1.0 + math.exp(-2.0))

_REQUIRED = ("label", "positive_prompt", "negative_prompt", "code", "default_threshold")
_OPTIONAL = ("site", "enabled")
_CODE_KEYS = ("value", "scheme", "meaning")


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


@dataclass(frozen=True)
class Catalogue:
    findings: tuple[Finding, ...]
    source: str = ""

    def enabled(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.enabled)

    def by_label(self, label: str) -> Finding:
        for finding in self.findings:
            if finding.label == label:
                return finding
        raise KeyError(f"no finding labelled {label!r} in the catalogue {self.source}")

    @property
    def version(self) -> str:
        """Short hash of the content (not of comments or layout): changes when any entry does."""
        canonical = json.dumps([asdict(f) for f in self.findings], sort_keys=True)
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
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        known = ", ".join(_REQUIRED + _OPTIONAL)
        raise CatalogueError(f"{where}: unknown key {unknown[0]!r} (known: {known})")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise CatalogueError(f"{where}: missing key {missing[0]!r}")
    label = _text(entry, "label", where)
    code = _code(entry["code"], f"{where}: code")
    site = _code(entry["site"], f"{where}: site") if "site" in entry else (None, None, None)
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise CatalogueError(f"{where}: key 'enabled' must be true or false, got {enabled!r}")
    return Finding(
        label=label,
        positive_prompt=_text(entry, "positive_prompt", where),
        negative_prompt=_text(entry, "negative_prompt", where),
        code_value=code[0],
        code_scheme=code[1],
        code_meaning=code[2],
        site_value=site[0],
        site_scheme=site[1],
        site_meaning=site[2],
        default_threshold=_threshold(entry["default_threshold"], where),
        enabled=enabled,
    )


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
