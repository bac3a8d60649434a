"""Is a radiograph of the chest? Read from Body Part Examined, then Anatomic Region Sequence.

1. Body Part Examined (0018,0015): CHEST is the DICOM defined term (PS3.16 Annex L); THORAX is
   what many vendors (and non-English consoles) write for the same region. A value that adds
   only projection words to one of them ("CHEST_PA", "THORAX AP", "CHEST PORTABLE") is the same
   statement. CHESTABDOMEN, CHEST WALL and the like are other regions and are not accepted.
2. Anatomic Region Sequence (0008,2218), consulted when Body Part Examined is missing or not a
   chest term: a coded chest region, SNOMED CT 816094009 "Chest" (the code CID 4031 uses now),
   51185008 "Thoracic structure" (its earlier code, SNOMED-RT T-D3000) or 43799004 "Thoracic
   cavity structure" (T-D3200). Any other code is another region.

`body_part` answers a `RegionEvidence` (chest or not, and the words an admin reads), or None
when neither attribute says anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from ml.dicom_view import SNOMED_SCHEMES, first_code

CHEST_TERMS = ("CHEST", "THORAX")
_PROJECTION_WORDS = frozenset({
    "PA", "AP", "LAT", "LATERAL", "LL", "RL", "FRONTAL", "PORTABLE", "ERECT", "UPRIGHT",
    "SUPINE", "VIEW", "VIEWS", "1", "2",
})
_CHEST_CODES = frozenset({"816094009", "51185008", "43799004", "T-D3000", "T-D3200"})


@dataclass(frozen=True)
class RegionEvidence:
    """`chest`: whether the statement is a chest; `said`: what was read, for a reason sentence
    (e.g. "BodyPartExamined KNEE"); `source`: "body_part_examined" or "anatomic_region"."""

    chest: bool
    said: str
    source: str

    @property
    def refusal(self) -> str:
        """The skip reason when the region is not the chest."""
        if self.source == "body_part_examined":
            return f"{self.said} is not CHEST or THORAX"
        return f"{self.said} is not the chest"


def is_chest_term(value: str) -> bool:
    """True for CHEST or THORAX, alone or followed only by projection words ("CHEST_PA")."""
    words = [w for w in re.split(r"[\s_\-/.,]+", value.strip().upper()) if w]
    return bool(words) and words[0] in CHEST_TERMS and set(words[1:]) <= _PROJECTION_WORDS


def body_part(ds: Dataset) -> RegionEvidence | None:
    """What `ds` says of the body region (module docstring), or None when nothing is said.
    A chest Body Part Examined decides; otherwise a coded chest Anatomic Region does; otherwise
    the Body Part Examined, then the Anatomic Region, says which other region it is."""
    term = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if term and is_chest_term(term):
        return RegionEvidence(True, f"BodyPartExamined {term}", "body_part_examined")
    region = _anatomic_region(ds)
    if region is not None and region.chest:
        return region
    if term:
        return RegionEvidence(False, f"BodyPartExamined {term}", "body_part_examined")
    return region


def _anatomic_region(ds: Dataset) -> RegionEvidence | None:
    found = first_code(ds, "AnatomicRegionSequence")
    if found is None:
        return None
    code, scheme, meaning = found
    chest = scheme in SNOMED_SCHEMES and code in _CHEST_CODES
    shown = f"{meaning or 'code'} ({scheme or 'no scheme'} {code or 'missing'})"
    return RegionEvidence(chest, f"Anatomic Region Sequence {shown}", "anatomic_region")
