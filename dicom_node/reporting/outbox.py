"""Writing a result's objects (findings SR, summary image, text report, attention-map overlays)
to the outbox, atomically and durably, before
the outbound rows that point at them are committed."""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from dicom_node.reporting.content import AlgorithmInfo, FindingOutcome, ImageUse
from dicom_node.reporting.heatmap import build_heatmap_sc
from dicom_node.reporting.sr import (
    PreviousReport,
    build_findings_sr,
    build_not_analysed_sr,
)
from dicom_node.reporting.summary import build_not_analysed_sc, build_summary_sc
from dicom_node.reporting.text_report import build_not_analysed_text_report, build_text_report
from dicom_node.reporting.uids import InstanceUids, ReportUids
from storage.spool import Spool

SR = "sr"
SUMMARY = "summary"
TEXT = "text"
HEATMAP = "heatmap"
KINDS = (SR, SUMMARY, TEXT, HEATMAP)


@dataclass(frozen=True)
class WrittenObject:
    kind: str  # sr | summary | text | heatmap
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    relative_path: str  # within the outbox


def write_report(
    outbox: Spool,
    *,
    evidence: Sequence[Dataset],
    findings: Sequence[FindingOutcome],
    algorithm: AlgorithmInfo,
    uids: ReportUids,
    node_uid: str,
    previous: Sequence[PreviousReport],
    when: datetime.datetime,
    images: Sequence[ImageUse] = (),
    previous_text: Sequence[PreviousReport] = (),
) -> list[WrittenObject]:
    """Build the SR, the summary image and the text report and write them; the same inputs
    write the same bytes."""
    sr = write_sr(outbox, evidence=evidence, findings=findings, algorithm=algorithm, uids=uids,
                  node_uid=node_uid, previous=previous, when=when)
    summary = write_summary(outbox, evidence=evidence, findings=findings, algorithm=algorithm,
                            uids=uids.summary, when=when, images=images)
    text = write_text_report(outbox, evidence=evidence, findings=findings, algorithm=algorithm,
                             uids=uids.text, node_uid=node_uid, previous=previous_text,
                             when=when, images=images)
    return [sr, summary, text]


def write_sr(
    outbox: Spool,
    *,
    evidence: Sequence[Dataset],
    findings: Sequence[FindingOutcome],
    algorithm: AlgorithmInfo,
    uids: ReportUids,
    node_uid: str,
    previous: Sequence[PreviousReport],
    when: datetime.datetime,
) -> WrittenObject:
    """Build the findings SR and write it (durable on return)."""
    sr = build_findings_sr(
        evidence=evidence, findings=findings, algorithm=algorithm, uids=uids.sr,
        tracking_uids=dict(uids.tracking), node_uid=node_uid, previous=previous,
        content_datetime=when,
    )
    return _write(outbox, SR, sr)


def write_summary(
    outbox: Spool,
    *,
    evidence: Sequence[Dataset],
    findings: Sequence[FindingOutcome],
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    when: datetime.datetime,
    images: Sequence[ImageUse] = (),
) -> WrittenObject:
    """Render the summary image and write it (durable on return)."""
    summary = build_summary_sc(
        evidence=evidence, findings=findings, algorithm=algorithm, uids=uids,
        content_datetime=when, images=images,
    )
    return _write(outbox, SUMMARY, summary)


def write_text_report(
    outbox: Spool,
    *,
    evidence: Sequence[Dataset],
    findings: Sequence[FindingOutcome],
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    node_uid: str,
    previous: Sequence[PreviousReport],
    when: datetime.datetime,
    images: Sequence[ImageUse] = (),
) -> WrittenObject:
    """Build the text report and write it (durable on return). `previous`: the text report
    it supersedes."""
    report = build_text_report(
        evidence=evidence, findings=findings, algorithm=algorithm, uids=uids,
        node_uid=node_uid, images=images, previous=previous, content_datetime=when,
    )
    return _write(outbox, TEXT, report)


def write_heatmap(
    outbox: Spool,
    *,
    source: Dataset,
    pixels: np.ndarray,
    heat: np.ndarray,
    finding: FindingOutcome,
    algorithm: AlgorithmInfo,
    uids: InstanceUids,
    when: datetime.datetime,
) -> WrittenObject:
    """Render one attention-map overlay and write it (durable on return)."""
    overlay = build_heatmap_sc(source=source, pixels=pixels, heat=heat, finding=finding,
                               algorithm=algorithm, uids=uids, content_datetime=when)
    return _write(outbox, HEATMAP, overlay)


def write_not_analysed(
    outbox: Spool,
    *,
    evidence: Sequence[Dataset],
    reasons: Sequence[str],
    algorithm: AlgorithmInfo,
    uids: ReportUids,
    node_uid: str,
    previous: Sequence[PreviousReport],
    when: datetime.datetime,
    chest: bool = True,
    images: Sequence[ImageUse] = (),
    previous_text: Sequence[PreviousReport] = (),
) -> list[WrittenObject]:
    """Build and write the "not analysed" SR, summary image and text report of a skipped study
    (durable on return); the same inputs write the same bytes. `chest`: the images say they
    are of the chest (else the SR's procedure is only "XR unspecified body region");
    `images`: the study's images and why each was left out."""
    sr = build_not_analysed_sr(evidence=evidence, reasons=reasons, algorithm=algorithm,
                               uids=uids.sr, node_uid=node_uid, previous=previous,
                               content_datetime=when, chest=chest)
    summary = build_not_analysed_sc(evidence=evidence, reasons=reasons, algorithm=algorithm,
                                    uids=uids.summary, content_datetime=when)
    text = build_not_analysed_text_report(
        evidence=evidence, reasons=reasons, algorithm=algorithm, uids=uids.text,
        node_uid=node_uid, images=images, previous=previous_text, content_datetime=when,
        chest=chest,
    )
    return [_write(outbox, SR, sr), _write(outbox, SUMMARY, summary), _write(outbox, TEXT, text)]


def _write(outbox: Spool, kind: str, ds: Dataset) -> WrittenObject:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    entry = outbox.write(ds.StudyInstanceUID, ds.SOPInstanceUID, [buffer.getbuffer()])
    return WrittenObject(
        kind=kind,
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_instance_uid=ds.SOPInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        relative_path=entry.relative_path,
    )
