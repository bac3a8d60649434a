"""TID 1501 measurement groups built the plain highdicom way, every content item anew per
finding, as dicom_node.reporting.sr built them before it shared the items equal in all groups.
The findings SR must be the same with either (tests/test_report_sr.py)."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes

from dicom_node.reporting.content import MANUFACTURER, AlgorithmInfo, FindingOutcome
from dicom_node.reporting.sr import CERTAINTY_NOTE, DECISION_THRESHOLD


def reference_group(
    finding: FindingOutcome, algorithm: AlgorithmInfo, headers: Sequence[Dataset],
    tracking_uid: str,
) -> Dataset:
    """The measurement group CONTAINER item of one finding."""
    parameters = [f"threshold={finding.threshold:.3f};profile={algorithm.profile}"]
    parameters += [f"checkpoint_sha256={sha}" for sha in algorithm.checkpoint_sha256s]
    if algorithm.catalogue_version:
        parameters.append(f"catalogue={algorithm.catalogue_version}")
    if algorithm.aggregation:
        parameters.append(f"study_aggregation={algorithm.aggregation}")
    if algorithm.conversion:
        parameters.append(f"dicom_conversion={algorithm.conversion}")
    parameters.append(CERTAINTY_NOTE)
    if finding.derivation:
        parameters.append(f"score {finding.derivation}")
    decision = codes.SCT.Present if finding.present else codes.SCT.Absent
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid, identifier=finding.label),
        finding_type=finding.code,
        finding_sites=[hd.sr.FindingSite(anatomic_location=finding.site)] if finding.site else None,
        algorithm_id=hd.sr.AlgorithmIdentification(
            name=algorithm.name, version=algorithm.version, parameters=parameters,
            manufacturer=MANUFACTURER,
        ),
        source_images=[
            hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in headers
        ],
        measurements=[
            hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding,
                              value=round(finding.probability * 100, 4), unit=codes.UCUM.Percent),
            hd.sr.Measurement(name=DECISION_THRESHOLD, value=round(finding.threshold * 100, 4),
                              unit=codes.UCUM.Percent),
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=finding.code, value=decision)],
    )
    return group[0]
