"""The findings SR: what a PACS or an SR reader gets back from a built, saved report."""

from __future__ import annotations

import io
import shutil
import subprocess

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from dicom_node.reporting.sr import PreviousReport, build_findings_sr
from dicom_node.reporting.uids import ResultKey, derived_uid, report_uids
from tests.report_samples import WHEN, algorithm, dciodvfy, dx_image, findings

NODE_UID = derived_uid("node", "AINODE")


def _build(evidence, *, algo=None, previous=(), profile="v3", version=1):
    algo = algo or algorithm(profile=profile)
    outcomes = findings()
    key = ResultKey.of(
        study_instance_uid=evidence[0].StudyInstanceUID,
        model_name=algo.name,
        checkpoint_sha256s=algo.checkpoint_sha256s,
        profile=algo.profile,
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in evidence],
    )
    uids = report_uids(key, version=version, labels=[f.label for f in outcomes])
    return build_findings_sr(
        evidence=evidence,
        findings=outcomes,
        algorithm=algo,
        uids=uids.sr,
        tracking_uids=dict(uids.tracking),
        node_uid=NODE_UID,
        previous=previous,
        content_datetime=WHEN,
    )


def _comments(sr):
    return [
        item.TextValue for item in sr.ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]


@pytest.fixture
def evidence():
    study = generate_uid()
    return [dx_image(study, 1), dx_image(study, 2)]


@pytest.fixture
def saved(evidence, tmp_path):
    path = tmp_path / "sr.dcm"
    _build(evidence).save_as(path, enforce_file_format=True)
    return path


def test_round_trip_has_one_coded_group_per_finding(saved, evidence):
    report = hd.sr.srread(saved)
    groups = report.content.get_image_measurement_groups()
    expected = findings()
    assert [g.finding_type.value for g in groups] == [f.code.value for f in expected]
    for group, finding in zip(groups, expected):
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        assert values["Certainty of Finding"] == pytest.approx(finding.probability * 100)
        assert values["Decision threshold"] == pytest.approx(finding.threshold * 100)
        (decision,) = group.get_qualitative_evaluations()
        assert decision.name.value == finding.code.value
        want = codes.SCT.Present if finding.present else codes.SCT.Absent
        assert decision.value.value == want.value
        referenced = {img.referenced_sop_instance_uid for img in group.source_images}
        assert referenced == {ds.SOPInstanceUID for ds in evidence}


def test_report_stays_in_the_study_with_the_patient_of_the_evidence(saved, evidence):
    sr = pydicom.dcmread(saved)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.StudyInstanceUID == evidence[0].StudyInstanceUID
    assert sr.SeriesInstanceUID != evidence[0].SeriesInstanceUID
    assert str(sr.PatientName) == "Müller^Anna"
    assert sr.PatientID == "PID-0001"


def test_demo_model_report_says_not_for_clinical_use(saved):
    sr = pydicom.dcmread(saved)
    assert sr.ContentQualification == "RESEARCH"
    assert "NOT FOR CLINICAL USE" in sr.SeriesDescription
    assert any(t.startswith("NOT FOR CLINICAL USE") for t in _comments(sr))


def test_clinical_model_report_has_no_caveat(evidence, tmp_path):
    sr = _build(evidence, algo=algorithm(clinical_use=True))
    assert sr.ContentQualification == "PRODUCT"
    assert _comments(sr) == []
    assert "NOT FOR CLINICAL USE" not in sr.SeriesDescription


def test_algorithm_identification_names_checkpoints_threshold_and_profile(saved):
    report = hd.sr.srread(saved)
    group = report.content.get_image_measurement_groups()[0]
    items = [(i.ConceptNameCodeSequence[0].CodeValue, i.TextValue)
             for i in group[0].ContentSequence if i.ValueType == "TEXT"]
    assert ("111001", "chexzero-demo-synthetic") in items  # Algorithm Name
    assert ("111003", "a1a1a1a1a1a1+b2b2b2b2b2b2") in items  # Algorithm Version
    parameters = [text for code, text in items if code == "111002"]
    assert "threshold=0.430;profile=v3" in parameters
    assert f"checkpoint_sha256={'a1' * 32}" in parameters
    assert "study_aggregation=mean" in parameters
    assert "dicom_conversion=equalize" in parameters  # moves scores by up to 0.12
    # The coded concept stays "Certainty of Finding"; the parameters say what it really holds.
    assert any("uncalibrated CheXzero score" in p and "not a probability" in p
               for p in parameters)


def test_series_and_content_carry_the_result_time(saved):
    sr = pydicom.dcmread(saved)
    assert (sr.SeriesDate, sr.SeriesTime) == ("20240301", "093000")
    assert (sr.ContentDate, sr.ContentTime) == ("20240301", "093000")


def test_rebuilding_the_same_result_gives_the_same_instance(evidence):
    first, second = io.BytesIO(), io.BytesIO()
    _build(evidence).save_as(first, enforce_file_format=True)
    _build(evidence).save_as(second, enforce_file_format=True)
    assert first.getvalue() == second.getvalue()


def test_new_profile_is_a_new_instance_in_the_same_series(evidence):
    old, new = _build(evidence, profile="v3"), _build(evidence, profile="v4", version=2)
    assert new.SOPInstanceUID != old.SOPInstanceUID
    assert new.SeriesInstanceUID == old.SeriesInstanceUID
    assert new.InstanceNumber == 2


def test_superseding_report_names_the_one_it_replaces(evidence):
    old = _build(evidence)
    previous = PreviousReport(old.StudyInstanceUID, old.SeriesInstanceUID, old.SOPInstanceUID)
    new = _build(evidence, profile="v4", previous=[previous], version=2)
    (study,) = new.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    (ref,) = series.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == old.SOPInstanceUID
    assert ref.ReferencedSOPClassUID == old.SOPClassUID


def test_image_without_orientation_is_referenced_but_not_in_the_library(tmp_path):
    study = generate_uid()
    evidence = [dx_image(study, 1), dx_image(study, 2, orientation=False)]
    path = tmp_path / "sr.dcm"
    _build(evidence).save_as(path, enforce_file_format=True)
    group = hd.sr.srread(path).content.get_image_measurement_groups()[0]
    assert len(group.source_images) == 2
    assert dciodvfy(path)[0] == []


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        ({"evidence": []}, "evidence"),
        ({"findings": []}, "findings"),
        ({"tracking_uids": {}}, "tracking_uids"),
    ],
)
def test_bad_input_names_the_argument(evidence, change, argument):
    kwargs = {
        "evidence": evidence, "findings": findings(), "algorithm": algorithm(),
        "uids": report_uids(
            ResultKey.of(study_instance_uid=evidence[0].StudyInstanceUID, model_name="m",
                         checkpoint_sha256s=["x"], profile="v1", source_sop_instance_uids=["1"]),
            version=1, labels=[f.label for f in findings()],
        ).sr,
        "tracking_uids": {f.label: derived_uid(f.label) for f in findings()},
        "node_uid": NODE_UID,
    }
    kwargs.update(change)
    with pytest.raises(ValueError, match=argument):
        build_findings_sr(**kwargs)


def test_dciodvfy_finds_no_errors(saved):
    errors, warnings = dciodvfy(saved)
    assert errors == []
    # The only expected warning: dicom3tools does not know the private coding scheme.
    assert all("99DCMNODE" in w for w in warnings)


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk not installed")
def test_dsrdump_shows_findings_and_caveat(saved):
    dump = subprocess.run(["dsrdump", str(saved)], check=True, capture_output=True, text=True,
                          timeout=60)
    assert 'CODE:(,,"Pneumothorax")=(52101004,SCT,"Present")' in dump.stdout
    assert 'NUM:(,,"Certainty of Finding")="88.0"' in dump.stdout
    assert "NOT FOR CLINICAL USE" in dump.stdout


def _groups(sr):
    """The TID 1501 measurement group CONTAINER items, in document order."""
    found = []
    for item in sr.ContentSequence:
        for child in item.get("ContentSequence", []):
            if child.ConceptNameCodeSequence[0].CodeValue == "125007":
                found.append(child)
    return found


def test_groups_equal_those_built_item_by_item_by_highdicom(evidence):
    """Items shared between groups (for speed) change nothing: each written group equals the
    one highdicom builds anew per finding, derived No Finding included."""
    from dataclasses import replace

    from dicom_node.reporting.evidence import tolerant_headers
    from tests.sr_reference import reference_group

    outcomes = findings()
    outcomes[-1] = replace(outcomes[-1], derivation="1 - max of the other findings' scores")
    tracking = {f.label: generate_uid() for f in outcomes}
    sr = build_findings_sr(evidence=evidence, findings=outcomes, algorithm=algorithm(),
                           uids=report_uids(ResultKey.of(
                               study_instance_uid=evidence[0].StudyInstanceUID, model_name="m",
                               checkpoint_sha256s=("a1" * 32,), profile="v3",
                               source_sop_instance_uids=[ds.SOPInstanceUID for ds in evidence]),
                               version=1, labels=[]).sr,
                           tracking_uids=tracking, node_uid=NODE_UID, content_datetime=WHEN)
    written = _groups(sr)
    headers = tolerant_headers(evidence)
    expected = [reference_group(f, algorithm(), headers, tracking[f.label]) for f in outcomes]
    assert len(written) == len(expected) == len(outcomes)
    for got, want in zip(written, expected, strict=True):
        assert _encoded(got) == _encoded(want)
    texts = [item.get("TextValue", "") for item in written[-1].ContentSequence]
    assert "score 1 - max of the other findings' scores" in texts


def _encoded(item):
    """The bytes of one item as the SR's transfer syntax writes it."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, item)
    return fp.getvalue()
