"""The text report: an Enhanced SR that reads like a short report, for the viewers a radiologist
uses. OHIF v3 draws only TID 1500 measurement groups with spatial coordinates (ours have none:
the model locates nothing) and fails on the findings SR, while it renders a plain text tree
cleanly, one "Concept: value" line per item when a container's content is SEPARATE; Orthanc's
viewers and dsrdump show it too.

Tree (root "Diagnostic Imaging Report", LOINC 18748-4; no template claimed, so the order is ours
and puts what a reader needs first):
  TEXT Comment: the caveat, when the model is not for clinical use;
  CONTAINER Findings: one TEXT Finding per finding, "Pleural Effusion: PRESENT, score 0.71,
    threshold 0.55", present ones first (or one Comment "Not analysed: <why>");
  CONTAINER Current Procedure Descriptions: Algorithm Name / Version / Parameters (TID 4019
    concepts: threshold profile, aggregation rule, DICOM to 8-bit conversion) and Comments
    (what the scores are, which images were scored and which left out and why, the analysis
    date and time);
  then the language, the device observer and the procedure reported.
The findings SR stays the machine-readable result; this one is built from the same inputs.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.reporting.content import (
    SCORE_NOTE,
    AlgorithmInfo,
    FindingOutcome,
    ImageUse,
    aggregation_line,
    analysis_time,
    check_algorithm,
    check_findings,
    conversion_line,
    finding_line,
    images_line,
    images_of,
    not_analysed_text,
    ordered,
)
from dicom_node.reporting.sr import (
    COMMENT,
    ENGLISH,
    PreviousReport,
    check_evidence,
    observation_context,
    procedures_reported,
    sr_document,
)
from dicom_node.reporting.uids import InstanceUids

CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
TITLE = codes.LN.DiagnosticImagingReport


def build_text_report(
    *,
    evidence: Sequence[Dataset],
    findings: Sequence[FindingOutcome],
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    node_uid: str,
    images: Sequence[ImageUse] = (),
    previous: Sequence[PreviousReport] = (),
    content_datetime: datetime.datetime | None = None,
) -> Dataset:
    """The text report of one result as an Enhanced SR data set. `evidence`: headers of the
    scored images; `images`: every image of the study, scored or not (default: the evidence,
    all scored); `previous`: the text report this one supersedes; `content_datetime`: when the
    result was made (pass it so a rebuild is byte-identical). Raises ValueError naming the
    argument for empty evidence or findings, bad scores or an incomplete algorithm."""
    headers = check_evidence(evidence)
    check_findings(findings)
    check_algorithm(algorithm)
    when = content_datetime or datetime.datetime.now(datetime.UTC)
    used = images_of(headers, images)
    section = _section(codes.DCM.Findings,
                       [_text(codes.DCM.Finding, finding_line(f)) for f in ordered(findings)])
    method = _method(algorithm, used, when, analysed=True)
    root = _root(headers, algorithm, node_uid, section, method, chest=True)
    return sr_document(headers, root, algorithm, uids, previous, when, sr_class=hd.sr.EnhancedSR,
                     series_description=series_description(algorithm))


def build_not_analysed_text_report(
    *,
    evidence: Sequence[Dataset],
    reasons: Sequence[str],
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    node_uid: str,
    images: Sequence[ImageUse] = (),
    previous: Sequence[PreviousReport] = (),
    content_datetime: datetime.datetime | None = None,
    chest: bool = True,
) -> Dataset:
    """The text report of a study the node did not analyse: the caveat, "Not analysed: <why>"
    and which images there were. `reasons`: sentences; `images`: the study's images with the
    reason each was left out; `chest`: the images say they are of the chest. Raises ValueError
    without evidence or reasons."""
    headers = check_evidence(evidence)
    if not reasons:
        raise ValueError("reasons: at least one reason is needed")
    check_algorithm(algorithm)
    when = content_datetime or datetime.datetime.now(datetime.UTC)
    used = images_of(headers, images) if images else [
        ImageUse(str(ds.SOPInstanceUID), False, None, str(ds.get("ViewPosition", "") or ""))
        for ds in headers
    ]
    section = _section(codes.DCM.Findings, [_text(COMMENT, not_analysed_text(reasons))])
    method = _method(algorithm, used, when, analysed=False)
    root = _root(headers, algorithm, node_uid, section, method, chest=chest)
    return sr_document(headers, root, algorithm, uids, previous, when, sr_class=hd.sr.EnhancedSR,
                     series_description=series_description(algorithm))


def series_description(algorithm: AlgorithmInfo) -> str:
    if algorithm.clinical_use:
        return f"AI report {algorithm.name}"[:64]
    return "AI report - NOT FOR CLINICAL USE"


def _root(
    headers: Sequence[Dataset],
    algorithm: AlgorithmInfo,
    node_uid: str,
    section: hd.sr.ContainerContentItem,
    method: hd.sr.ContainerContentItem,
    *,
    chest: bool,
) -> Dataset:
    root = hd.sr.ContainerContentItem(name=TITLE, is_content_continuous=False)
    items: list[Dataset] = []
    if not algorithm.clinical_use:
        items.append(_text(COMMENT, algorithm.caveat))
    items += [
        section,
        method,
        *hd.sr.LanguageOfContentItemAndDescendants(language=ENGLISH),
        *observation_context(node_uid, algorithm),
        *(
            hd.sr.CodeContentItem(name=codes.DCM.ProcedureReported, value=code,
                                  relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)
            for code in procedures_reported(headers, chest=chest)
        ),
    ]
    root.ContentSequence = items
    return root


def _method(
    algorithm: AlgorithmInfo, images: Sequence[ImageUse], when: datetime.datetime,
    *, analysed: bool,
) -> hd.sr.ContainerContentItem:
    """How the result was made, as "Concept: value" lines."""
    items = [_text(codes.DCM.AlgorithmName, algorithm.name),
             _text(codes.DCM.AlgorithmVersion, algorithm.version)]
    parameters = []
    if analysed:
        scored = sum(image.scored for image in images)
        parameters = [f"threshold profile {algorithm.profile}",
                      aggregation_line(algorithm.aggregation, scored),
                      conversion_line(algorithm.conversion)]
    if algorithm.catalogue_version:
        parameters.append(f"findings catalogue {algorithm.catalogue_version}")
    items += [_text(codes.DCM.AlgorithmParameters, p) for p in parameters if p]
    comments = [f"Scores are {SCORE_NOTE}." if analysed else "",
                f"Images: {images_line(images)}", f"Analysed {analysis_time(when)}"]
    items += [_text(COMMENT, c) for c in comments if c]
    return _section(codes.DCM.CurrentProcedureDescriptions, items)


def _section(title: Code, items: Sequence[hd.sr.ContentItem]) -> hd.sr.ContainerContentItem:
    section = hd.sr.ContainerContentItem(name=title, is_content_continuous=False,
                                         relationship_type=CONTAINS)
    section.ContentSequence = list(items)
    return section


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=CONTAINS)
