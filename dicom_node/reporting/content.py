"""What a report says, independent of how it is encoded: the findings of one result, the
algorithm that produced them and which images it scored. The findings SR, the text report and
the summary image are all built from these, and share the sentences below so that they say the
same thing in the same words."""

from __future__ import annotations

import datetime
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.sr.coding import Code

DEFAULT_CAVEAT = "NOT FOR CLINICAL USE — demo model trained on synthetic data"
SCORE_NOTE = (
    "uncalibrated CheXzero scores (a softmax over a positive/negative prompt pair per "
    "finding), not probabilities"
)
# The DICOM -> 8-bit conversions of ml.dicom_image (`[model] dicom_conversion`), as reports name
# them; switching between them moves scores by up to 0.12, so every report says which was used.
CONVERSIONS = {
    "equalize": "histogram equalisation, as MIMIC-CXR-JPG was made",
    "voi": "the image's own VOI LUT or window",
}
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
    aggregation: str = ""  # image -> study rule: mean | max ("" when not known)
    conversion: str = ""  # DICOM -> 8-bit: equalize | voi ("" when not known)

    @property
    def version(self) -> str:
        """Short checkpoint hashes, ensemble members joined by '+'."""
        return "+".join(sha[:12] for sha in self.checkpoint_sha256s)


@dataclass(frozen=True)
class ImageUse:
    """One image of the study as a report names it: scored, or left out and why (`reason`, a
    sentence from ml.dicom_image). `view`: its ViewPosition ("" when not stated)."""

    sop_instance_uid: str
    scored: bool
    reason: str | None = None
    view: str = ""


def ordered(findings: Sequence[FindingOutcome]) -> list[FindingOutcome]:
    """Findings called present first, each group in catalogue order (the order given)."""
    return [f for f in findings if f.present] + [f for f in findings if not f.present]


def score_and_threshold(finding: FindingOutcome) -> tuple[str, str]:
    """The score and threshold as a reader sees them: two decimals, more when two would show a
    score below its threshold as equal to it ("0.50" vs "0.50", absent), up to four."""
    p, t = finding.probability, finding.threshold
    decimals = 2
    while decimals < 4 and p < t and round(p, decimals) >= round(t, decimals):
        decimals += 1
    return f"{p:.{decimals}f}", f"{t:.{decimals}f}"


def finding_line(finding: FindingOutcome) -> str:
    """"Pleural Effusion: PRESENT, score 0.71, threshold 0.55" (scores 0..1, see
    `score_and_threshold`)."""
    decision = "PRESENT" if finding.present else "absent"
    score, threshold = score_and_threshold(finding)
    return f"{finding.label}: {decision}, score {score}, threshold {threshold}"


def images_line(images: Sequence[ImageUse]) -> str:
    """"1 of 2 images scored (PA); not used: lateral view (...)" for the images of a result."""
    scored = [image for image in images if image.scored]
    views = sorted({image.view for image in scored if image.view})
    line = f"{len(scored)} of {len(images)} image{'s' if len(images) != 1 else ''} scored"
    if views:
        line += f" ({', '.join(views)})"
    reasons = Counter(image.reason or "not scored" for image in images if not image.scored)
    if reasons:
        line += "; not used: " + "; ".join(
            f"{reason} (x{n})" if n > 1 else reason for reason, n in reasons.items()
        )
    return line


def aggregation_line(rule: str, scored: int) -> str:
    """How image scores became the study's score, e.g. "study score = mean over 2 images"."""
    if scored == 1:
        return "study score = the score of the one scored image"
    if rule in ("mean", "max"):
        return f"study score = {rule} of the scores of the {scored} scored images"
    return ""


def conversion_line(conversion: str) -> str:
    """"DICOM to 8-bit: equalize (histogram equalisation, ...)" or "" when not known."""
    if not conversion:
        return ""
    return f"DICOM to 8-bit: {conversion} ({CONVERSIONS.get(conversion, 'as configured')})"


def analysis_time(when: datetime.datetime) -> str:
    """"2024-03-01 09:30 UTC" (a naive time is taken as UTC, as the node's clock is)."""
    aware = when if when.tzinfo else when.replace(tzinfo=datetime.UTC)
    return aware.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def images_of(evidence: Sequence[Any], images: Sequence[ImageUse]) -> list[ImageUse]:
    """`images` when given, else every evidence image as scored (a result made without the
    left-out images' names)."""
    if images:
        return list(images)
    return [ImageUse(str(ds.SOPInstanceUID), True, None, str(ds.get("ViewPosition", "") or ""))
            for ds in evidence]


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
