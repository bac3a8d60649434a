"""The findings Structured Report: a TID 1500 Measurement Report in a Comprehensive SR.

One TID 1501 measurement group per finding (recipe in shared/sr-coding.md): the finding code,
TID 4019 algorithm identification, "Certainty of Finding" in %, the decision threshold in %
(private code; DICOM has no standard concept for a cutoff), Present/Absent as a CODE named by
the finding, and every source image. Patient and study come only from the evidence.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ComprehensiveSRStorage

from dicom_node.logs import log_event
from dicom_node.reporting.content import (
    MANUFACTURER,
    PRIVATE_SCHEME,
    AlgorithmInfo,
    FindingOutcome,
    check_algorithm,
    check_findings,
    not_analysed_text,
)
from dicom_node.reporting.evidence import tolerant_headers
from dicom_node.reporting.uids import InstanceUids

LOG = logging.getLogger(__name__)

DECISION_THRESHOLD = Code("DECTHR", PRIVATE_SCHEME, "Decision threshold")
COMMENT = Code("121106", "DCM", "Comment")
NOT_ANALYSED = Code("NOTANL", PRIVATE_SCHEME, "Not analysed")
ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")  # as TID 1500's
ALGORITHM_PARAMETERS = Code("111002", "DCM", "Algorithm Parameters")
XR_CHEST_SINGLE_VIEW = Code("36554-4", "LN", "XR Chest Single view")
XR_CHEST_TWO_VIEWS = Code("36643-5", "LN", "XR Chest 2 Views")
CHARACTER_SET = "ISO_IR 192"  # UTF-8: the caveat text is not Latin-1
# DICOM has no concept for an uncalibrated score; the coded "Certainty of Finding" is kept (it is
# what readers look for) and this parameter says what its value really is.
CERTAINTY_NOTE = (
    "Certainty of Finding holds an uncalibrated CheXzero score (a softmax over a "
    "positive/negative prompt pair per finding), not a probability"
)


@dataclass(frozen=True)
class PreviousReport:
    """The SR a new result supersedes (goes into PredecessorDocumentsSequence)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ComprehensiveSRStorage

    def as_dataset(self) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = self.series_instance_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        ds.SOPClassUID = self.sop_class_uid
        return ds


def build_findings_sr(
    *,
    evidence: Sequence[Dataset],
    findings: Sequence[FindingOutcome],
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    tracking_uids: dict[str, str] | None = None,
    node_uid: str,
    previous: Sequence[PreviousReport] = (),
    content_datetime: datetime.datetime | None = None,
) -> Dataset:
    """Build the findings SR for one result. `evidence`: headers of the images the findings were
    computed from (pixel data not needed); `node_uid`: the device observer UID of this node;
    `content_datetime`: when the result was made (pass it so a rebuild is byte-identical).
    Returns the document as a data set; read a saved one with `highdicom.sr.srread` for
    highdicom's content accessors."""
    headers = check_evidence(evidence)
    check_findings(findings)
    check_algorithm(algorithm)
    tracking_uids = tracking_uids or {}
    missing = [f.label for f in findings if f.label not in tracking_uids]
    if missing:
        raise ValueError(f"tracking_uids: no tracking UID for {missing}")
    # Items equal in every group are built once and shared (highdicom builds each content item
    # attribute by attribute, ~0.2 ms apiece): the written bytes are the same.
    sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in headers]
    shared = _shared_algorithm_items(algorithm)
    groups = [
        _measurement_group(f, _algorithm_id(f, shared), sources, tracking_uids[f.label])
        for f in findings
    ]
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(node_uid, algorithm),
        procedure_reported=procedures_reported(headers),
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
        referenced_images=_library_images(headers) or None,
    )
    root = report[0]
    if not algorithm.clinical_use:
        _insert_caveat(root, algorithm.caveat)
    return sr_document(headers, root, algorithm, uids, previous, content_datetime)


def build_not_analysed_sr(
    *,
    evidence: Sequence[Dataset],
    reasons: Sequence[str],
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    node_uid: str,
    previous: Sequence[PreviousReport] = (),
    content_datetime: datetime.datetime | None = None,
    chest: bool = True,
) -> Dataset:
    """The SR of a study the node did not analyse: a Comprehensive SR in the findings' series
    whose root container (titled like the findings report, but claiming no template) holds
    the device observer, the procedure, the caveat and one TEXT item "Not analysed: <reasons>".
    `evidence`: headers of the study's images; `reasons`: sentences saying why; `chest`: the
    images say they are of the chest (else no chest X-ray procedure is claimed). Raises
    ValueError without evidence or reasons."""
    headers = check_evidence(evidence)
    if not reasons:
        raise ValueError("reasons: at least one reason is needed")
    check_algorithm(algorithm)
    root = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport)
    items: list[hd.sr.ContentItem] = [
        *hd.sr.LanguageOfContentItemAndDescendants(language=ENGLISH),
        *observation_context(node_uid, algorithm),
        *(
            hd.sr.CodeContentItem(name=codes.DCM.ProcedureReported, value=code,
                                  relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)
            for code in procedures_reported(headers, chest=chest)
        ),
    ]
    if not algorithm.clinical_use:
        items.append(_text(COMMENT, algorithm.caveat))
    items.append(_text(NOT_ANALYSED, not_analysed_text(reasons)))
    root.ContentSequence = items
    return sr_document(headers, root, algorithm, uids, previous, content_datetime)


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def sr_document(
    headers: Sequence[Dataset],
    root: Dataset,
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    previous: Sequence[PreviousReport],
    content_datetime: datetime.datetime | None,
    *,
    sr_class: type[hd.sr.ComprehensiveSR | hd.sr.EnhancedSR] = hd.sr.ComprehensiveSR,
    series_description: str | None = None,
) -> Dataset:
    """Wrap `root` in an SR document (Comprehensive for the findings SR, Enhanced for the text
    report) with the result's time as Content, Series and Instance Creation Date/Time."""
    when = content_datetime or datetime.datetime.now(datetime.UTC)
    sr = sr_class(
        evidence=headers,
        content=_without_children(root),
        series_instance_uid=uids.series_instance_uid,
        series_number=uids.series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=uids.instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=algorithm.version[:64],
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description or _series_description(algorithm),
        content_qualification="PRODUCT" if algorithm.clinical_use else "RESEARCH",
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME, name="dicom-node private codes"
            )
        ],
        previous_versions=[p.as_dataset() for p in previous] or None,
        specific_character_set=CHARACTER_SET,
        content_date=when.date(),
        content_time=when.time().replace(microsecond=0, tzinfo=None),
    )
    sr.ContentSequence = root.ContentSequence
    _pin_timestamps(sr, when)
    return sr


def _without_children(root: Dataset) -> Dataset:
    """The root container with an empty content sequence, for ComprehensiveSR to wrap.

    Given the whole tree, highdicom deep-copies and re-parses it and searches it three times
    (about 0.1 s for a dozen findings, most of the worker's time after scoring). Those passes
    only check what holds here by construction: every referenced image is one of `headers`
    (the evidence sequence lists all of them either way) and no SCOORD3D item exists. The
    children are attached afterwards; the written document is byte-identical."""
    shell = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            shell.add(element)
    shell.ContentSequence = []
    return shell


def _pin_timestamps(sr: Dataset, when: datetime.datetime) -> None:
    """highdicom stamps creation times with the wall clock; use the result's time instead. The
    series gets it too (archives file a series without Series Date under an unknown date)."""
    sr.InstanceCreationDate = when.strftime("%Y%m%d")
    sr.InstanceCreationTime = when.strftime("%H%M%S")
    sr.SeriesDate = sr.InstanceCreationDate
    sr.SeriesTime = sr.InstanceCreationTime
    for item in sr.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")


def check_evidence(evidence: Sequence[Dataset]) -> list[Dataset]:
    """Tolerant copies of the evidence headers; ValueError when there are none or they are of
    more than one study."""
    if not evidence:
        raise ValueError("evidence: at least one source image is needed")
    studies = {ds.get("StudyInstanceUID") for ds in evidence}
    if len(studies) != 1 or None in studies:
        raise ValueError(f"evidence: all images must share one StudyInstanceUID, got {studies}")
    return tolerant_headers(evidence)


def _series_description(algorithm: AlgorithmInfo) -> str:
    if algorithm.clinical_use:
        return f"AI findings {algorithm.name}"[:64]
    return "AI findings - NOT FOR CLINICAL USE"


def observation_context(node_uid: str, algorithm: AlgorithmInfo) -> hd.sr.ObservationContext:
    """TID 1001 with this node as the device observer (`node_uid`, the model's name)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=node_uid,
        name="dicom-node",
        manufacturer_name=MANUFACTURER,
        model_name=algorithm.name[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=device,
        )
    )


def procedures_reported(headers: Sequence[Dataset], *, chest: bool = True) -> list[Code]:
    """XR unspecified body region, plus XR Chest single view or 2 views (distinct
    ViewPositions) when `chest`."""
    if not chest:
        return [codes.LN.XRUnspecifiedBodyRegion]
    views = {str(ds.get("ViewPosition", "") or "") for ds in headers}
    chest = XR_CHEST_SINGLE_VIEW if len(views) == 1 else XR_CHEST_TWO_VIEWS
    return [codes.LN.XRUnspecifiedBodyRegion, chest]


def _library_images(headers: Sequence[Dataset]) -> list[Dataset]:
    """Images for the Image Library. Its projection-radiography descriptors need a two-valued
    PatientOrientation and ImagerPixelSpacing; an image without them (or whose values the
    tolerant copy emptied) is still referenced by every measurement group, it is only left out
    of the library (never given made-up values)."""
    usable = []
    for ds in headers:
        modality = ds.get("Modality", "")
        projection = modality in ("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA")
        lacking = [k for k in ("PatientOrientation", "ImagerPixelSpacing") if _count(ds, k) != 2]
        if projection and lacking:
            log_event(LOG, "image_library_skipped", sop_instance_uid=ds.SOPInstanceUID,
                      reason=f"no two-valued {' or '.join(lacking)}")
            continue
        usable.append(ds)
    return usable


def _count(ds: Dataset, keyword: str) -> int:
    """How many values `keyword` has in `ds` (0 when absent or empty)."""
    if keyword not in ds or ds[keyword].is_empty:
        return 0
    return ds[keyword].VM


class _AlgorithmIdentification(hd.sr.AlgorithmIdentification):
    """TID 4019 from ready content items (highdicom's constructor builds them all anew)."""

    def __init__(self, items: Sequence[hd.sr.ContentItem]) -> None:
        hd.sr.templates.Template.__init__(self, items)


@dataclass(frozen=True)
class _SharedAlgorithmItems:
    """TID 4019 items equal for every finding: name, version and manufacturer (`head`), the
    parameters after the threshold (`tail`)."""

    head: tuple[hd.sr.ContentItem, ...]
    tail: tuple[hd.sr.ContentItem, ...]
    profile: str


def _shared_algorithm_items(algorithm: AlgorithmInfo) -> _SharedAlgorithmItems:
    parameters = [f"checkpoint_sha256={sha}" for sha in algorithm.checkpoint_sha256s]
    if algorithm.catalogue_version:
        parameters.append(f"catalogue={algorithm.catalogue_version}")
    if algorithm.aggregation:
        parameters.append(f"study_aggregation={algorithm.aggregation}")
    if algorithm.conversion:
        parameters.append(f"dicom_conversion={algorithm.conversion}")
    parameters.append(CERTAINTY_NOTE)
    full = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=parameters,
        manufacturer=MANUFACTURER,
    )
    return _SharedAlgorithmItems(tuple(full[:3]), tuple(full[3:]), algorithm.profile)


def _algorithm_id(
    finding: FindingOutcome, shared: _SharedAlgorithmItems
) -> hd.sr.AlgorithmIdentification:
    """TID 4019 for one finding: name, version, manufacturer, then the parameters
    "threshold=...;profile=...", the checkpoints' SHA-256, catalogue, aggregation, conversion,
    what the score is, and for a derived finding (No Finding) its derivation."""
    threshold = f"threshold={finding.threshold:.3f};profile={shared.profile}"
    own = [_parameter(threshold)]
    if finding.derivation:  # e.g. No Finding: not a model output of its own
        return _AlgorithmIdentification(
            [*shared.head, *own, *shared.tail, _parameter(f"score {finding.derivation}")]
        )
    return _AlgorithmIdentification([*shared.head, *own, *shared.tail])


def _parameter(value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(
        name=ALGORITHM_PARAMETERS, value=value,
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
    )


def _measurement_group(
    finding: FindingOutcome,
    algorithm_id: hd.sr.AlgorithmIdentification,
    sources: list[hd.sr.SourceImageForMeasurementGroup],
    tracking_uid: str,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    decision = codes.SCT.Present if finding.present else codes.SCT.Absent
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=finding.label),
        finding_type=finding.code,
        finding_sites=[hd.sr.FindingSite(anatomic_location=finding.site)] if finding.site else None,
        algorithm_id=algorithm_id,
        source_images=sources,
        measurements=[
            hd.sr.Measurement(
                name=codes.DCM.CertaintyOfFinding,
                value=round(finding.probability * 100, 4),
                unit=codes.UCUM.Percent,
            ),
            hd.sr.Measurement(
                name=DECISION_THRESHOLD,
                value=round(finding.threshold * 100, 4),
                unit=codes.UCUM.Percent,
            ),
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding.code, value=decision)],
    )


def _insert_caveat(root: Dataset, caveat: str) -> None:
    """The not-for-clinical-use statement as a root-level TEXT comment (TID 1500 is extensible),
    placed before the Image Library and measurements so a plain SR rendering shows it first."""
    item = _text(COMMENT, caveat)
    content = root.ContentSequence
    position = next(
        (i for i, it in enumerate(content) if it.RelationshipType == "CONTAINS"), len(content)
    )
    content.insert(position, item)
