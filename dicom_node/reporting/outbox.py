"""Writing a result's objects (SR, summary image, attention-map overlays) to the outbox, atomically and durably, before
the outbound rows that point at them are committed."""

from __future__ import annotations

import datetime
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import Dataset

from dicom_node.reporting.content import AlgorithmInfo, FindingOutcome
from dicom_node.reporting.heatmap import build_heatmap_sc
from dicom_node.reporting.sr import (
    PreviousReport,
    build_findings_sr,
    build_not_analysed_sr,
)
from dicom_node.reporting.summary import build_not_analysed_sc, build_summary_sc
from dicom_node.reporting.uids import InstanceUids, ReportUids
from storage.spool import Spool

SR = "sr"
SUMMARY = "summary"
HEATMAP = "heatmap"


@dataclass(frozen=True)
class WrittenObject:
    kind: str  # sr | summary | heatmap
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
) -> list[WrittenObject]:
    """Build the SR and the summary image and write both; the same inputs write the same bytes."""
    sr = write_sr(outbox, evidence=evidence, findings=findings, algorithm=algorithm, uids=uids,
                  node_uid=node_uid, previous=previous, when=when)
    summary = write_summary(outbox, evidence=evidence, findings=findings, algorithm=algorithm,
                            uids=uids.summary, when=when)
    return [sr, summary]


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
) -> WrittenObject:
    """Render the summary image and write it (durable on return)."""
    summary = build_summary_sc(
        evidence=evidence, findings=findings, algorithm=algorithm, uids=uids,
        content_datetime=when,
    )
    return _write(outbox, SUMMARY, summary)


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
) -> list[WrittenObject]:
    """Build and write the "not analysed" SR and summary image of a skipped study (durable on
    return); the same inputs write the same bytes. `chest`: the images say they are of the
    chest (else the SR's procedure is only "XR unspecified body region")."""
    sr = build_not_analysed_sr(evidence=evidence, reasons=reasons, algorithm=algorithm,
                               uids=uids.sr, node_uid=node_uid, previous=previous,
                               content_datetime=when, chest=chest)
    summary = build_not_analysed_sc(evidence=evidence, reasons=reasons, algorithm=algorithm,
                                    uids=uids.summary, content_datetime=when)
    return [_write(outbox, SR, sr), _write(outbox, SUMMARY, summary)]


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
