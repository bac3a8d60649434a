"""The text report: an Enhanced SR that reads like a short report, for the viewers a radiologist
uses. OHIF v3 draws only TID 1500 measurement groups with spatial coordinates (ours have none:
the model locates nothing) and fails on the findings SR, while it renders a plain text tree
cleanly; Orthanc's viewers and dsrdump show it too.

Tree (root "Diagnostic Imaging Report", LOINC 18748-4; no template claimed):
  language, device observer, procedure reported;
  TEXT Comment: the caveat, first, when the model is not for clinical use;
  CONTAINER Findings: one TEXT Finding per finding, "Pleural Effusion: PRESENT, score 0.71,
    threshold 0.55", present ones first (or one Comment "Not analysed: <why>");
  CONTAINER Current Procedure Descriptions: model and checkpoints, threshold profile, what the
    scores are and how images made the study's score, the DICOM to 8-bit conversion, which
    images were scored and which were left out (and why), the analysis date and time.
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
    _check_evidence,
    _document,
    _observation_context,
    _procedures,
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
    headers = _check_evidence(evidence)
    check_findings(findings)
    check_algorithm(algorithm)
    when = content_datetime or datetime.datetime.now(datetime.UTC)
    used = images_of(headers, images)
    lines = [finding_line(f) for f in ordered(findings)]
    section = _section(codes.DCM.Findings, codes.DCM.Finding, lines)
    method = _method_lines(algorithm, used, when, analysed=True)
    root = _root(headers, algorithm, node_uid, section, method, chest=True)
    return _document(headers, root, algorithm, uids, previous, when, sr_class=hd.sr.EnhancedSR,
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
    headers = _check_evidence(evidence)
    if not reasons:
        raise ValueError("reasons: at least one reason is needed")
    check_algorithm(algorithm)
    when = content_datetime or datetime.datetime.now(datetime.UTC)
    used = images_of(headers, images) if images else [
        ImageUse(str(ds.SOPInstanceUID), False, None, str(ds.get("ViewPosition", "") or ""))
        for ds in headers
    ]
    section = _section(codes.DCM.Findings, COMMENT, [not_analysed_text(reasons)])
    method = _method_lines(algorithm, used, when, analysed=False)
    root = _root(headers, algorithm, node_uid, section, method, chest=chest)
    return _document(headers, root, algorithm, uids, previous, when, sr_class=hd.sr.EnhancedSR,
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
    method: Sequence[str],
    *,
    chest: bool,
) -> Dataset:
    root = hd.sr.ContainerContentItem(name=TITLE)
    items: list[Dataset] = [
        *hd.sr.LanguageOfContentItemAndDescendants(language=ENGLISH),
        *_observation_context(node_uid, algorithm),
        *(
            hd.sr.CodeContentItem(name=codes.DCM.ProcedureReported, value=code,
                                  relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD)
            for code in _procedures(headers, chest=chest)
        ),
    ]
    if not algorithm.clinical_use:
        items.append(_text(COMMENT, algorithm.caveat))
    items.append(section)
    items.append(_section(codes.DCM.CurrentProcedureDescriptions,
                          codes.DCM.ProcedureDescription, method))
    root.ContentSequence = items
    return root


def _method_lines(
    algorithm: AlgorithmInfo, images: Sequence[ImageUse], when: datetime.datetime,
    *, analysed: bool,
) -> list[str]:
    lines = [f"Model: {algorithm.name}, checkpoint {algorithm.version}"
             + (f", findings catalogue {algorithm.catalogue_version}"
                if algorithm.catalogue_version else "")]
    if analysed:
        lines.append(f"Threshold profile: {algorithm.profile}")
        scored = sum(image.scored for image in images)
        how = aggregation_line(algorithm.aggregation, scored)
        lines.append(f"Scores: {SCORE_NOTE}" + (f"; {how}" if how else ""))
    if analysed and algorithm.conversion:
        lines.append(conversion_line(algorithm.conversion))
    lines.append(f"Images: {images_line(images)}")
    lines.append(f"Analysed: {analysis_time(when)}")
    return lines


def _section(title: Code, item_name: Code,
             lines: Sequence[str]) -> hd.sr.ContainerContentItem:
    section = hd.sr.ContainerContentItem(name=title, relationship_type=CONTAINS)
    section.ContentSequence = [_text(item_name, line) for line in lines]
    return section


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type=CONTAINS)
