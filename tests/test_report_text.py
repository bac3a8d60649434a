"""The text report: what a reader sees in a viewer that renders SR as text (dsrdump here; OHIF
in tests/test_e2e_ohif.py), and that it is valid DICOM."""

from __future__ import annotations

import dataclasses
import subprocess

import pydicom
import pytest
from pydicom.uid import EnhancedSRStorage, generate_uid

from dicom_node.reporting.content import FindingOutcome, ImageUse, finding_line, ordered
from dicom_node.reporting.sr import PreviousReport
from dicom_node.reporting.text_report import (
    build_not_analysed_text_report,
    build_text_report,
)
from dicom_node.reporting.uids import ResultKey, derived_uid, report_uids
from tests.peers import DCMTK_BIN
from tests.report_samples import WHEN, algorithm, dciodvfy, dx_image, findings

NODE_UID = derived_uid("node", "AINODE")
LATERAL = "lateral view (ViewPosition LL); only PA/AP are scored"


def _uids(evidence, version=1, profile="v3"):
    key = ResultKey.of(study_instance_uid=evidence[0].StudyInstanceUID,
                       model_name="chexzero-demo-synthetic", checkpoint_sha256s=["a1" * 32],
                       profile=profile, source_sop_instance_uids=[evidence[0].SOPInstanceUID])
    return report_uids(key, version=version, labels=[]).text


def _build(evidence, *, algo=None, outcomes=None, images=(), previous=(), version=1):
    return build_text_report(
        evidence=evidence, findings=outcomes or findings(), algorithm=algo or algorithm(),
        uids=_uids(evidence, version, profile=f"v{version}"), node_uid=NODE_UID, images=images,
        previous=previous, content_datetime=WHEN,
    )


def _dump(ds, tmp_path) -> list[str]:
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run([str(DCMTK_BIN / "dsrdump"), "+Pl", str(path)], check=True,
                         capture_output=True, text=True, timeout=60)
    return [line.strip() for line in run.stdout.splitlines()]


def _texts(lines: list[str]) -> list[str]:
    """The content lines of a dsrdump tree ("<contains TEXT:...>"), in order."""
    return [line for line in lines if line.startswith("<contains TEXT")]


@pytest.fixture
def evidence():
    study = generate_uid()
    return [dx_image(study, 1)]


def test_reads_caveat_first_then_present_findings_then_absent_ones(evidence, tmp_path):
    lateral = dx_image(evidence[0].StudyInstanceUID, 2)
    images = [ImageUse(evidence[0].SOPInstanceUID, True, None, "PA"),
              ImageUse(lateral.SOPInstanceUID, False, LATERAL, "LL")]
    texts = _texts(_dump(_build(evidence, images=images), tmp_path))
    assert texts[0] == ('<contains TEXT:(,,"Comment")="NOT FOR CLINICAL USE — demo model '
                        'trained on synthetic data">')
    present, absent = [f for f in findings() if f.present], [f for f in findings() if not f.present]
    assert texts[1:1 + len(findings())] == [
        f'<contains TEXT:(,,"Finding")="{finding_line(f)}">' for f in present + absent]
    assert texts[1] == ('<contains TEXT:(,,"Finding")="Atelectasis: PRESENT, score 0.71, '
                        'threshold 0.43">')
    rest = "\n".join(texts[1 + len(findings()):])
    assert '"Algorithm Name")="chexzero-demo-synthetic"' in rest
    assert '"Algorithm Parameters")="threshold profile v3"' in rest
    assert "study score = the score of the one scored image" in rest
    assert "DICOM to 8-bit: equalize" in rest
    assert "uncalibrated CheXzero scores" in rest and "not probabilities" in rest
    assert f'"Images: 1 of 2 images scored (PA); not used: {LATERAL}"' in rest
    assert '"Analysed 2024-03-01 09:30 UTC"' in rest


def test_a_clinical_model_report_has_no_caveat(evidence, tmp_path):
    report = _build(evidence, algo=algorithm(clinical_use=True))
    assert "NOT FOR CLINICAL USE" not in "\n".join(_dump(report, tmp_path))
    assert report.ContentQualification == "PRODUCT"


def test_is_an_enhanced_sr_in_its_own_series_of_the_study_dated_by_the_result(evidence):
    report = _build(evidence)
    assert report.SOPClassUID == EnhancedSRStorage
    assert report.StudyInstanceUID == evidence[0].StudyInstanceUID
    assert report.PatientID == evidence[0].PatientID
    assert (report.SeriesNumber, report.InstanceNumber) == (9903, 1)
    assert report.SeriesDescription == "AI report - NOT FOR CLINICAL USE"
    assert (report.SeriesDate, report.SeriesTime) == ("20240301", "093000")
    assert (str(report.ContentDate), str(report.ContentTime)) == ("20240301", "093000")


def test_superseding_report_names_the_previous_text_report(evidence):
    old = _build(evidence)
    new = _build(evidence, version=2, previous=[PreviousReport(
        old.StudyInstanceUID, old.SeriesInstanceUID, old.SOPInstanceUID, EnhancedSRStorage)])
    assert new.SeriesInstanceUID == old.SeriesInstanceUID
    assert new.SOPInstanceUID != old.SOPInstanceUID
    reference = new.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert reference.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert reference.ReferencedSOPSequence[0].ReferencedSOPClassUID == EnhancedSRStorage


def test_a_score_just_below_its_threshold_never_reads_as_equal():
    outcome = FindingOutcome("Edema", findings()[0].code, None, 0.4996, 0.5, False)
    assert finding_line(outcome) == "Edema: absent, score 0.4996, threshold 0.5000"
    at = dataclasses.replace(outcome, probability=0.5, present=True)
    assert finding_line(at) == "Edema: PRESENT, score 0.50, threshold 0.50"


def test_ordered_keeps_catalogue_order_within_present_and_absent():
    labels = [f.label for f in ordered(findings())]
    assert labels == ["Atelectasis", "Enlarged Cardiomediastinum", "Pneumothorax",
                      "Cardiomegaly", "Pleural Effusion"]


def test_not_analysed_report_says_why(evidence, tmp_path):
    report = build_not_analysed_text_report(
        evidence=evidence, reasons=["no eligible image among 1: " + LATERAL],
        algorithm=algorithm(), uids=_uids(evidence), node_uid=NODE_UID,
        images=[ImageUse(evidence[0].SOPInstanceUID, False, LATERAL, "LL")],
        content_datetime=WHEN)
    texts = _texts(_dump(report, tmp_path))
    assert "NOT FOR CLINICAL USE" in texts[0]
    assert f'"Not analysed: no eligible image among 1: {LATERAL}"' in texts[1]
    assert not any('"Finding")' in line for line in texts)
    assert any(f"Images: 0 of 1 image scored; not used: {LATERAL}" in t for t in texts)


@pytest.mark.parametrize("change, argument", [
    ({"evidence": []}, "evidence"),
    ({"findings": []}, "findings"),
])
def test_bad_input_names_the_argument(evidence, change, argument):
    arguments = {"evidence": evidence, "findings": findings(), "algorithm": algorithm(),
                 "uids": _uids(evidence), "node_uid": NODE_UID} | change
    with pytest.raises(ValueError, match=argument):
        build_text_report(**arguments)


def test_dciodvfy_finds_no_errors(evidence, tmp_path):
    for name, report in (("findings", _build(evidence)), ("not-analysed", (
            build_not_analysed_text_report(evidence=evidence, reasons=["why"],
                                           algorithm=algorithm(), uids=_uids(evidence),
                                           node_uid=NODE_UID, content_datetime=WHEN)))):
        path = tmp_path / f"{name}.dcm"
        report.save_as(path, enforce_file_format=True)
        errors, warnings = dciodvfy(path)
        assert errors == [], (name, errors)
        assert all("99DCMNODE" in w for w in warnings), warnings
    assert pydicom.dcmread(path).SOPClassUID == EnhancedSRStorage
