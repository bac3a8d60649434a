"""A study the node will not analyse is answered too: a "not analysed: why" SR and summary image,
built from the study's own headers, sent to the same destinations; a later findings SR for the
study names it as its predecessor."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.reporting.sr import PreviousReport, build_findings_sr, build_not_analysed_sr
from dicom_node.reporting.summary import build_not_analysed_sc
from dicom_node.reporting.uids import ResultKey, report_uids
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import DCMTK_BIN, NodeProcess, StoreSCP, storescu
from tests.report_samples import WHEN, algorithm, dciodvfy, dx_image, findings

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
TEXT_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"  # the text report
REASON = "no eligible image among 1: lateral view (ViewPosition LL); only PA/AP are scored"


def _lateral_header(study_uid: str):
    ds = dx_image(study_uid)
    ds.ViewPosition = "LL"
    ds.PatientSex = "U"  # through the tolerant copier like every report
    return ds


def _not_analysed(ds, tmp_path: Path, name: str):
    key = ResultKey.of(study_instance_uid=ds.StudyInstanceUID, model_name="m",
                       checkpoint_sha256s=["a" * 64], profile="",
                       source_sop_instance_uids=[ds.SOPInstanceUID], not_analysed=REASON)
    uids = report_uids(key, version=1, labels=[])
    sr = build_not_analysed_sr(evidence=[ds], reasons=[REASON], algorithm=algorithm(),
                               uids=uids.sr, node_uid="1.2.3", content_datetime=WHEN)
    sc = build_not_analysed_sc(evidence=[ds], reasons=[REASON], algorithm=algorithm(),
                               uids=uids.summary, content_datetime=WHEN)
    paths = tmp_path / f"{name}-sr.dcm", tmp_path / f"{name}-sc.dcm"
    sr.save_as(paths[0], enforce_file_format=True)
    sc.save_as(paths[1], enforce_file_format=True)
    return paths


def test_not_analysed_sr_and_summary_say_why_and_are_valid(tmp_path):
    ds = _lateral_header(generate_uid())
    sr_path, sc_path = _not_analysed(ds, tmp_path, "first")
    dump = subprocess.run([str(DCMTK_BIN / "dsrdump"), "+Pl", "+Pc", str(sr_path)], check=True,
                          capture_output=True, text=True).stdout
    assert f'TEXT:(NOTANL,99DCMNODE,"Not analysed")="Not analysed: {REASON}"' in dump
    assert "NOT FOR CLINICAL USE" in dump
    for path in (sr_path, sc_path):
        errors, _ = dciodvfy(path)
        assert errors == [], f"{path.name}: {errors}"
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    assert sr.ContentQualification == "RESEARCH"
    assert sr.SeriesDescription == sc.SeriesDescription.replace(" summary", "") == (
        "AI findings - NOT FOR CLINICAL USE")
    assert f"Not analysed: {REASON}" in sc.ImageComments
    assert sr.PatientID == sc.PatientID == ds.PatientID
    assert sr.PatientSex == sc.PatientSex == ""  # "U" is not M/F/O: emptied, Type 2


def test_a_rebuild_gives_the_same_instances(tmp_path):
    ds = _lateral_header(generate_uid())
    first = _not_analysed(ds, tmp_path, "first")
    again = _not_analysed(ds, tmp_path, "again")
    for a, b in zip(first, again, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_not_analysed_key_differs_from_a_findings_key_with_the_same_images():
    common = {"study_instance_uid": "1.2.3", "model_name": "m",
              "checkpoint_sha256s": ["a" * 64], "profile": "",
              "source_sop_instance_uids": ["1.2.3.4"]}
    findings_key = ResultKey.of(**common)
    skipped_key = ResultKey.of(**common, not_analysed=REASON)
    assert findings_key.digest() != skipped_key.digest()


def test_findings_sr_names_the_not_analysed_sr_as_predecessor(tmp_path):
    lateral = _lateral_header(generate_uid())
    sr_path, _ = _not_analysed(lateral, tmp_path, "na")
    previous = pydicom.dcmread(sr_path)
    pa = dx_image(lateral.StudyInstanceUID)
    key = ResultKey.of(study_instance_uid=pa.StudyInstanceUID, model_name="m",
                       checkpoint_sha256s=["a" * 64], profile="v1",
                       source_sop_instance_uids=[pa.SOPInstanceUID],
                       supersedes=previous.SOPInstanceUID)
    uids = report_uids(key, version=2, labels=[f.label for f in findings()])
    sr = build_findings_sr(
        evidence=[pa], findings=findings(), algorithm=algorithm(), uids=uids.sr,
        tracking_uids=dict(uids.tracking), node_uid="1.2.3", content_datetime=WHEN,
        previous=[PreviousReport(previous.StudyInstanceUID, previous.SeriesInstanceUID,
                                 previous.SOPInstanceUID)],
    )
    (study,) = sr.PredecessorDocumentsSequence
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == previous.SeriesInstanceUID == sr.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == previous.SOPInstanceUID


# --- the real node, with dcmtk storescp as the PACS ------------------------------------------


def _node(workdir: Path, scp: StoreSCP, **worker) -> NodeProcess:
    node = NodeProcess.create(
        workdir, worker={"enabled": True, "poll_interval_seconds": 1, **worker},
        outbound={"poll_interval_seconds": 1},
    )
    with node.config_path.open("a") as f:
        f.write(f'\n[[destinations]]\nname = "pacs"\nae_title = "{scp.ae_title}"\n'
                f'host = "127.0.0.1"\nport = {scp.port}\nconnect_timeout_seconds = 5\n')
    return node


def _received(scp: StoreSCP, study_uid: str) -> dict[str, list[pydicom.Dataset]]:
    found: dict[str, list[pydicom.Dataset]] = {SR_CLASS: [], SC_CLASS: [], TEXT_CLASS: []}
    for path in scp.output_dir.iterdir():
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # noqa: BLE001, S112  storescp may still be writing it
            continue
        if ds.StudyInstanceUID == study_uid and ds.SOPClassUID in found:
            found[ds.SOPClassUID].append(ds)
    return found


def _send(node: NodeProcess, tmp_path: Path, ds) -> None:
    path = write(ds, tmp_path / "in" / f"{ds.SOPInstanceUID}.dcm")
    sent = storescu(node.port, [path], called_ae=node.ae_title)
    assert sent.returncode == 0, sent.stdout + sent.stderr


@pytest.mark.slow
def test_lateral_only_study_gets_a_not_analysed_result_then_a_superseding_one(tmp_path):
    scp = StoreSCP(tmp_path / "pacs").start()
    node = _node(tmp_path / "node", scp)
    study = StudyUids()
    try:
        node.start()
        _send(node, tmp_path, make_radiograph(view="LL", study=study, rows=256, columns=256))
        skipped = node.wait_for_state(study.study, "SKIPPED", timeout=120)
        assert "lateral view" in skipped.skip_reason
        got = node.wait_for(lambda: (r := _received(scp, study.study))[SR_CLASS]
                            and r[SC_CLASS] and r[TEXT_CLASS] and r,
                            "the not-analysed SR, summary and text report", 60)
        (na_sr,), (na_sc,), (na_text,) = got[SR_CLASS], got[SC_CLASS], got[TEXT_CLASS]
        texts = [item.TextValue for item in na_sr.ContentSequence if "TextValue" in item]
        assert any(t.startswith("Not analysed: ") and "lateral view" in t for t in texts)
        assert "Not analysed: " in na_sc.ImageComments and "lateral view" in na_sc.ImageComments
        assert na_sr.ContentQualification == "RESEARCH"
        assert "36554-4" in _procedure_codes(na_sr)  # XR Chest Single view: it is a chest

        _send(node, tmp_path, make_radiograph(view="PA", study=study, rows=256, columns=256,
                                              instance_number=2, seed=3))
        node.wait_for(lambda: len((r := _received(scp, study.study))[SR_CLASS]) == 2
                      and len(r[TEXT_CLASS]) == 2, "the findings SR and text report", 120)
        node.wait_for_state(study.study, "DONE", timeout=30)
    finally:
        node.stop()
        scp.stop()
    srs = {ds.SOPInstanceUID: ds for ds in _received(scp, study.study)[SR_CLASS]}
    (findings_sr,) = [ds for uid, ds in srs.items() if uid != na_sr.SOPInstanceUID]
    predecessor = findings_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == na_sr.SOPInstanceUID
    assert findings_sr.InstanceNumber == 2 and na_sr.InstanceNumber == 1
    (findings_text,) = [ds for ds in _received(scp, study.study)[TEXT_CLASS]
                        if ds.SOPInstanceUID != na_text.SOPInstanceUID]
    predecessor = findings_text.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        na_text.SOPInstanceUID)


def _knee(study: StudyUids, number: int, view: str = "AP"):
    ds = make_radiograph(kind="CR", view=view, study=study, rows=256, columns=256,
                         instance_number=number, seed=number)
    ds.BodyPartExamined = "KNEE"
    ds.AnatomicRegionSequence = [_code("72696002", "SCT", "Knee")]
    return ds


def _code(value: str, scheme: str, meaning: str) -> pydicom.Dataset:
    item = pydicom.Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _procedure_codes(sr: pydicom.Dataset) -> list[str]:
    return [item.ConceptCodeSequence[0].CodeValue for item in sr.ContentSequence
            if item.ConceptNameCodeSequence[0].CodeValue == "121058"]  # Procedure reported


@pytest.mark.slow
def test_a_study_of_another_body_part_is_skipped_and_nothing_is_sent(tmp_path):
    """A site whose PACS routes every CR here: a knee study is not one the node was meant to
    analyse, so no "not analysed" SR and summary land in it."""
    scp = StoreSCP(tmp_path / "pacs").start()
    node = _node(tmp_path / "node", scp)
    study = StudyUids()
    try:
        node.start()
        _send(node, tmp_path, _knee(study, 1))
        _send(node, tmp_path, _knee(study, 2, view="LL"))
        skipped = node.wait_for_state(study.study, "SKIPPED", timeout=120)
        assert "BodyPartExamined KNEE is not CHEST or THORAX" in skipped.skip_reason
        time.sleep(3)  # three outbound polls: anything queued would have gone by now
        assert node.cli_json("outbound", "list") == []
        (event,) = node.events("study_skipped")
        assert event["not_reported"] == "no CR/DX image of the chest"
    finally:
        node.stop()
        scp.stop()
    assert list(scp.output_dir.iterdir()) == []


def test_not_analysed_sr_claims_a_chest_procedure_only_for_a_chest(tmp_path):
    ds = _lateral_header(generate_uid())
    key = ResultKey.of(study_instance_uid=ds.StudyInstanceUID, model_name="m",
                       checkpoint_sha256s=["a" * 64], profile="",
                       source_sop_instance_uids=[ds.SOPInstanceUID], not_analysed=REASON)
    uids = report_uids(key, version=1, labels=[])
    built = {chest: build_not_analysed_sr(evidence=[ds], reasons=[REASON], algorithm=algorithm(),
                                          uids=uids.sr, node_uid="1.2.3", chest=chest,
                                          content_datetime=WHEN)
             for chest in (True, False)}
    assert _procedure_codes(built[True]) == ["43468-8", "36554-4"]  # unspecified; chest 1 view
    assert _procedure_codes(built[False]) == ["43468-8"]  # XR unspecified body region only


@pytest.mark.slow
def test_with_report_skipped_false_nothing_is_sent(tmp_path):
    scp = StoreSCP(tmp_path / "pacs").start()
    node = _node(tmp_path / "node", scp, report_skipped=False)
    study = StudyUids()
    try:
        node.start()
        _send(node, tmp_path, make_radiograph(view="LL", study=study, rows=256, columns=256))
        node.wait_for_state(study.study, "SKIPPED", timeout=120)
        time.sleep(3)  # three outbound polls: anything queued would have gone by now
        assert node.cli_json("outbound", "list") == []
    finally:
        node.stop()
        scp.stop()
    assert list(scp.output_dir.iterdir()) == []
