"""Which projection a radiograph shows when its ViewPosition is missing.

About 4 % of a large public chest archive has no ViewPosition, yet most of those files say the
view elsewhere. The sources are asked in order of how directly they describe this one image,
and the first that says something decides:

1. View Code Sequence (0054,0220): a CID 4010 "DX View" code, SNOMED CT (SCT) or its older
   SNOMED-RT (SRT) form; a code not in the table is read by its Code Meaning text.
2. Patient Orientation (0020,0020): the direction of the rows. A frontal (PA/AP) projection
   has rows running left-right (L or R), a lateral one anterior-posterior (A or P).
3. Text: Series Description, Protocol Name, then Study Description (words such as LAT,
   LATERAL, PA, AP). A text that names both a frontal and a lateral view (a study "CHEST PA
   AND LAT") says nothing about this image and is passed over.

The answer is a `ViewEvidence` (frontal, lateral or other projection, and where it came from),
or None when no source says anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

FRONTAL, LATERAL, OTHER = "frontal", "lateral", "other"

# CID 4010 (DX View), as pydicom's sr tables list it: SCT code and its SRT equivalent
_VIEW_CODES: dict[str, tuple[str, str]] = {
    "272479007": (FRONTAL, "postero-anterior"),
    "R-10214": (FRONTAL, "postero-anterior"),
    "R-40888": (FRONTAL, "postero-anterior"),
    "399348003": (FRONTAL, "antero-posterior"),
    "R-10206": (FRONTAL, "antero-posterior"),
    "399033003": (FRONTAL, "frontal"),
    "R-10202": (FRONTAL, "frontal"),
    "399173006": (LATERAL, "left lateral"),
    "R-10236": (LATERAL, "left lateral"),
    "399198007": (LATERAL, "right lateral"),
    "R-10232": (LATERAL, "right lateral"),
    "399352003": (LATERAL, "lateral-medial"),
    "R-10228": (LATERAL, "lateral-medial"),
    "399067008": (LATERAL, "lateral"),
    "R-102CD": (LATERAL, "lateral"),
    "399260004": (LATERAL, "medial-lateral"),
    "R-10224": (LATERAL, "medial-lateral"),
}
SNOMED_SCHEMES = ("SCT", "SRT", "SNM3", "99SDM")  # SNOMED CT and its older designators

_FRONTAL_WORDS = frozenset({"PA", "AP", "FRONTAL", "POSTEROANTERIOR", "ANTEROPOSTERIOR"})
_LATERAL_WORDS = frozenset({"LAT", "LATERAL", "LL", "RL", "LLAT", "RLAT", "LATERALMEDIAL"})
_TEXT_SOURCES = (
    ("SeriesDescription", "series_description", "Series Description"),
    ("ProtocolName", "protocol_name", "Protocol Name"),
    ("StudyDescription", "study_description", "Study Description"),
)


@dataclass(frozen=True)
class ViewEvidence:
    """What one source says: `kind` frontal | lateral | other, `said` the words shown to an
    admin (e.g. "View Code Sequence: left lateral"), `source` the flag suffix
    (`view_from_<source>`)."""

    kind: str
    said: str
    source: str

    @property
    def flag(self) -> str:
        return f"view_from_{self.source}"


def infer_view(ds: Dataset) -> ViewEvidence | None:
    """The first source that names the projection (see the module docstring), or None."""
    for finder in (_from_view_code, _from_patient_orientation, _from_text):
        evidence = finder(ds)
        if evidence is not None:
            return evidence
    return None


def _from_view_code(ds: Dataset) -> ViewEvidence | None:
    found = first_code(ds, "ViewCodeSequence")
    if found is None:
        return None
    code, scheme, meaning = found
    known = _VIEW_CODES.get(code) if scheme in SNOMED_SCHEMES else None
    if known is not None:
        return ViewEvidence(known[0], f"View Code Sequence: {known[1]}", "view_code_sequence")
    kind = _kind_of_text(meaning)
    shown = meaning or f"code {code or 'missing'} ({scheme or 'no scheme'})"
    return ViewEvidence(kind or OTHER, f"View Code Sequence: {shown}", "view_code_sequence")


def first_code(ds: Dataset, keyword: str) -> tuple[str, str, str] | None:
    """(Code Value, Coding Scheme Designator upper-cased, Code Meaning) of the first item of the
    code sequence `keyword`, stripped; None when the sequence is absent, empty, or its item has
    neither a code nor a meaning."""
    items = ds.get(keyword)
    if not items:
        return None
    item = items[0]
    code = str(item.get("CodeValue", "") or "").strip()
    scheme = str(item.get("CodingSchemeDesignator", "") or "").strip().upper()
    meaning = str(item.get("CodeMeaning", "") or "").strip()
    return (code, scheme, meaning) if code or meaning else None


def _from_patient_orientation(ds: Dataset) -> ViewEvidence | None:
    value = ds.get("PatientOrientation")
    if not value:
        return None
    values = list(value) if not isinstance(value, str) else value.split("\\")
    row = str(values[0]).strip().upper() if values else ""
    if not row:
        return None
    kind = {"L": FRONTAL, "R": FRONTAL, "A": LATERAL, "P": LATERAL}.get(row[0])
    if kind is None:
        return None
    shown = "\\".join(str(v) for v in values)
    return ViewEvidence(kind, f"Patient Orientation {shown}", "patient_orientation")


def _from_text(ds: Dataset) -> ViewEvidence | None:
    for keyword, source, name in _TEXT_SOURCES:
        kind = _kind_of_text(str(ds.get(keyword, "") or ""))
        if kind is not None:
            return ViewEvidence(kind, f"{name} says {kind}", source)
    return None


def _kind_of_text(text: str) -> str | None:
    """FRONTAL or LATERAL when the text names exactly one of them, else None."""
    words = set(re.split(r"[^A-Z]+", text.upper().replace("-", ""))) - {""}
    frontal, lateral = bool(words & _FRONTAL_WORDS), bool(words & _LATERAL_WORDS)
    if frontal == lateral:
        return None
    return FRONTAL if frontal else LATERAL
