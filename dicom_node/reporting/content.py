"""What a report says, independent of how it is encoded: the findings of one result and the
algorithm that produced them. The SR and the summary image are both built from these."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.sr.coding import Code

DEFAULT_CAVEAT = "NOT FOR CLINICAL USE — demo model trained on synthetic data"
SCORE_NOTE = (
    "scores are a softmax over a positive/negative prompt pair per finding, "
    "not calibrated probabilities"
)
PRIVATE_SCHEME = "99DCMNODE"
MANUFACTURER = "dicom-node"


@dataclass(frozen=True)
class FindingOutcome:
    """One finding of one result: its coded concept, the study-level score and the decision."""

    label: str
    code: Code
    site: Code | None
    probability: float  # 0..1
    threshold: float  # 0..1
    present: bool
    derivation: str | None = None  # a derived score (No Finding): how it was made, in words

    @classmethod
    def from_catalogue(cls, finding: Any, probability: float, threshold: float) -> FindingOutcome:
        """From an `ml.catalogue.Finding` (codes come from the catalogue, never literals)."""
        site = None
        if getattr(finding, "site_value", None):
            site = Code(finding.site_value, finding.site_scheme, finding.site_meaning)
        return cls(
            label=finding.label,
            code=Code(finding.code_value, finding.code_scheme, finding.code_meaning),
            site=site,
            probability=float(probability),
            threshold=float(threshold),
            present=float(probability) >= float(threshold),
            derivation=getattr(finding, "derivation", None),
        )


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model behind a result, as TID 4019 and the summary image show it."""

    name: str
    checkpoint_sha256s: tuple[str, ...]
    profile: str  # threshold profile label, e.g. "v3", or "defaults" for catalogue defaults
    clinical_use: bool
    caveat: str = DEFAULT_CAVEAT
    catalogue_version: str = ""

    @property
    def version(self) -> str:
        """Short checkpoint hashes, ensemble members joined by '+'."""
        return "+".join(sha[:12] for sha in self.checkpoint_sha256s)


def check_findings(findings: Sequence[FindingOutcome]) -> None:
    """Raise ValueError naming the problem when findings cannot be reported."""
    if not findings:
        raise ValueError("findings: at least one finding is needed")
    labels = [f.label for f in findings]
    if len(set(labels)) != len(labels):
        raise ValueError(f"findings: duplicate labels in {labels}")
    for f in findings:
        for name in ("probability", "threshold"):
            value = getattr(f, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"findings[{f.label}].{name}: must be within 0..1, got {value}")


def not_analysed_text(reasons: Sequence[str]) -> str:
    """The statement a skipped study's SR and summary image carry: "Not analysed: <reasons>"."""
    return "Not analysed: " + "; ".join(reasons)


def check_algorithm(algorithm: AlgorithmInfo) -> None:
    if not algorithm.name:
        raise ValueError("algorithm.name: must not be empty")
    if not algorithm.checkpoint_sha256s:
        raise ValueError("algorithm.checkpoint_sha256s: at least one checkpoint hash is needed")
    if not algorithm.clinical_use and not algorithm.caveat:
        raise ValueError("algorithm.caveat: required when clinical_use is false")
