"""The one way attributes travel from a source image into the objects the node writes.

Real devices and archives send header values that pydicom or highdicom refuse: PatientSex `U`
or lower case, birth dates such as `00000000`, dates and times not in DICOM form, one-valued
or zero pixel spacings, over-long strings, control characters. Everything the SR and the
summary image take from their evidence (patient and study modules, the equipment highdicom
lists as contributing, the image library descriptors and the source references) is copied
here, once: a value that is valid DICOM is copied as is; one that is not is left empty (every
such attribute is Type 2 or 3 in the objects written), and a sequence item holding one is
left out. What was emptied is named (keyword and the kind of problem, never the value) so
the caller can log it.

Identity UIDs (SOP Class/Instance, Study, Series) are copied unchanged whatever their form:
intake decided they are acceptable, and the reports must reference them exactly.
"""

from __future__ import annotations

import copy
import datetime
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VM, dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.valuerep import VALIDATORS

from dicom_node.logs import log_event

LOG = logging.getLogger(__name__)

IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
# What highdicom and the summary read besides patient and study (library, equipment, procedure).
IMAGE_AND_EQUIPMENT = (
    "Modality", "Rows", "Columns", "PatientOrientation", "ImagerPixelSpacing", "PixelSpacing",
    "FrameOfReferenceUID", "ViewPosition", "Manufacturer", "ManufacturerModelName",
    "SoftwareVersions", "DeviceSerialNumber", "InstitutionName", "InstitutionalDepartmentName",
    "InstitutionAddress", "StationName", "AcquisitionDateTime", "AcquisitionDate",
    "AcquisitionTime",
)
# Type 2 in the SR and the summary image: present (possibly empty) whatever the source has.
TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
    "StudyDate", "StudyTime", "ReferringPhysicianName",
)
_TEXT_WITH_CONTROLS = ("LT", "ST", "UT")  # may hold TAB, LF, FF, CR
_ALLOWED_CONTROLS = frozenset("\t\n\f\r")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # leading zeros accepted, as intake does
_ORIENTATION = re.compile(r"^[APRLHF]+$")
_SPACINGS = ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing")
_VALUE_ERRORS = (ValueError, TypeError, OverflowError, AttributeError, KeyError, IndexError)


@dataclass
class TolerantHeader:
    """A copy of a source image's header that every report builder can use unchanged."""

    dataset: Dataset
    emptied: dict[str, str] = field(default_factory=dict)  # keyword (path) -> kind of problem


def patient_study_keywords(sop_class_uid: str) -> tuple[str, ...]:
    """Root attributes of the Patient and Study modules of the source's IOD: exactly what
    highdicom copies into an SR (from its module tables; the CR IOD's for an unknown class)."""
    from highdicom._standard_utils import (
        get_iod_module_map,
        get_module_attribute_map,
        get_sop_class_iod_map,
    )

    iods = get_sop_class_iod_map()
    iod = iods.get(sop_class_uid) or iods["1.2.840.10008.5.1.4.1.1.1"]
    attributes = get_module_attribute_map()
    found: list[str] = []
    for module in get_iod_module_map()[iod]:
        if module["ie"] in ("Patient", "Study"):
            found += [str(a["keyword"]) for a in attributes[module["key"]] if not a["path"]]
    return tuple(dict.fromkeys(found))


def tolerant_header(source: Dataset) -> TolerantHeader:
    """Copy what the reports need from `source` (pixel data never). Raises ValueError only when
    an identity UID is missing, since nothing can reference such an image."""
    missing = [k for k in IDENTITY if not source.get(k)]
    if missing:
        raise ValueError(f"evidence: source image has no {', '.join(missing)}")
    header = TolerantHeader(Dataset())
    for keyword in IDENTITY:
        header.dataset[tag_for_keyword(keyword)] = copy.deepcopy(source[keyword])
    wanted = (*patient_study_keywords(str(source.SOPClassUID)), *IMAGE_AND_EQUIPMENT)
    for keyword in dict.fromkeys(wanted):
        if keyword not in IDENTITY and keyword in source:
            _copy_element(source, tag_for_keyword(keyword), header, keyword)
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in header.dataset:
            header.dataset[tag_for_keyword(keyword)] = _empty(tag_for_keyword(keyword))
    return header


def tolerant_headers(evidence: Sequence[Dataset]) -> list[Dataset]:
    """`tolerant_header` for every image, with one log line per image that had values emptied
    (naming the attributes, never the values). Idempotent: a copy of a copy changes nothing,
    so passing already tolerant headers logs nothing."""
    headers = []
    for source in evidence:
        header = tolerant_header(source)
        if header.emptied:
            log_event(LOG, "evidence_values_emptied", level=logging.WARNING,
                      sop_instance_uid=str(source.SOPInstanceUID), attributes=header.emptied)
        headers.append(header.dataset)
    return headers


def _copy_element(source: Dataset, tag: int, header: TolerantHeader, path: str) -> None:
    try:
        element = source[tag]
        problem = value_problem(element)
        if problem is None and element.VR == "SQ":
            element = _tolerant_sequence(element, header, path)
    except _VALUE_ERRORS:
        element, problem = None, "value cannot be read"
    if problem is None and element is not None:
        header.dataset[tag] = element if element.VR == "SQ" else copy.deepcopy(element)
    else:
        header.emptied[path] = problem or "value cannot be read"
        header.dataset[tag] = _empty(tag)


def _tolerant_sequence(element: DataElement, header: TolerantHeader, path: str) -> DataElement:
    """The sequence without the items that hold a value that cannot be copied."""
    kept = []
    for item in element.value:
        problems = _item_problems(item)
        if problems:
            header.emptied.update({f"{path}>{name}": why for name, why in problems.items()})
        else:
            kept.append(copy.deepcopy(item))
    return DataElement(element.tag, "SQ", kept)


def _item_problems(item: Dataset) -> dict[str, str]:
    problems: dict[str, str] = {}
    for tag in list(item.keys()):
        name = keyword_for_tag(tag) or f"({tag.group:04X},{tag.element:04X})"
        try:
            element = item[tag]
            if element.VR == "SQ":
                for sub in element.value:
                    problems |= {f"{name}>{k}": v for k, v in _item_problems(sub).items()}
                continue
            problem = value_problem(element)
        except _VALUE_ERRORS:
            problem = "value cannot be read"
        if problem:
            problems[name] = problem
    return problems


def _empty(tag: int) -> DataElement:
    vr = dictionary_VR(tag)
    return DataElement(tag, vr, [] if vr == "SQ" else None)


def value_problem(element: DataElement) -> str | None:
    """Why `element`'s value cannot be copied into a conformant object, or None when it can.
    The answer names the kind of problem, never the value (it is safe to log)."""
    if element.VR == "SQ":
        return None
    if element.VR == "UN" and not element.tag.is_private and _dictionary_vr(element.tag):
        return "value of unknown encoding (VR UN)"
    values = _values(element.value)
    if not values:
        return None
    problem = _multiplicity_problem(element.tag, len(values))
    if problem:
        return problem
    for value in values:
        problem = _single_value_problem(element.VR, value)
        if problem:
            return problem
    check = _SEMANTIC.get(element.keyword)
    return check(values) if check else None


def _values(value: Any) -> list[Any]:
    if value is None or value == "" or value == b"":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return list(value)
    return [value]


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _multiplicity_problem(tag: int, count: int) -> str | None:
    try:
        spec = dictionary_VM(tag)
        low, _, high = spec.partition("-")
        step = int(low) if high.endswith("n") and high[:-1] == low else 1
        minimum = int(low)
        maximum = math.inf if high.endswith("n") else int(high or low)
    except (KeyError, ValueError):  # a private tag, or a VM such as "1-n or 1"
        return None
    if minimum <= count <= maximum and count % step == 0:
        return None
    return f"{count} values where the standard allows {spec}"


def _single_value_problem(vr: str, value: Any) -> str | None:
    if isinstance(value, (bytes, bytearray)) or vr in ("OB", "OW", "OF", "OD", "OL", "OV"):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, str) and vr not in ("DS", "IS"):
        ok, _ = VALIDATORS[vr](vr, value) if vr in VALIDATORS else (True, "")
        return None if ok else f"not a valid {vr} value"
    text = str(value)
    allowed = _ALLOWED_CONTROLS if vr in _TEXT_WITH_CONTROLS else frozenset()
    if any((ord(c) < 0x20 or c in "\x7f\ufffd") and c not in allowed for c in text):
        return "control or undecodable characters"
    if vr == "UI":
        return None if len(text) <= 64 and _UID.match(text) else "not a valid UID"
    validator = VALIDATORS.get(vr)
    if validator is not None and not validator(vr, text)[0]:
        return f"not a valid {vr} value"
    if vr == "DA" and len(text) == 8 and not _real_date(text):
        return "not a calendar date"
    return None


def _real_date(text: str) -> bool:
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return False
    return True


def _positive_spacing(values: list[Any]) -> str | None:
    numbers = [float(v) for v in values]
    return None if all(math.isfinite(v) and v > 0 for v in numbers) else "spacing not positive"


def _patient_sex(values: list[Any]) -> str | None:
    return None if all(str(v) in ("M", "F", "O") for v in values) else "not M, F or O"


def _orientation(values: list[Any]) -> str | None:
    ok = all(_ORIENTATION.match(str(v)) for v in values)
    return None if ok else "not patient direction letters"


_SEMANTIC = {
    "PatientSex": _patient_sex,
    "PatientOrientation": _orientation,
    **{keyword: _positive_spacing for keyword in _SPACINGS},
}
