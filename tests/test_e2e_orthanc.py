"""End to end with real peers on loopback: dcmtk storescu as the modality, the node as a
subprocess (`dicom-node serve`), Orthanc as the PACS. What the radiologist's PACS receives is
read back through Orthanc's REST API."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.reporting.uids import HEATMAP_SERIES_NUMBER, SUMMARY_SERIES_NUMBER
from dicom_node.settings import load_settings
from dicom_node.worker import load_model
from ml.catalogue import apply_derived
from ml.dicom_image import dataset_to_uint8
from ml.testing import write_random_checkpoint
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import NodeProcess, OrthancPeer, free_port, run_cli, storescu
from tests.report_samples import dciodvfy

pytestmark = pytest.mark.slow

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
TEXT_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"  # the text report (Enhanced SR)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The configured model (the shipped demo weights) when present, else a small random
    checkpoint in the released layout, made here."""
    shipped = load_settings(environ={})
    configured = [shipped.resolve(p) for p in shipped.model.checkpoints]
    if configured and all(p.is_file() for p in configured):
        return configured[0]
    return write_random_checkpoint(tmp_path_factory.mktemp("model") / "random.pt", seed=5)


@pytest.fixture(scope="module")
def engine(checkpoint):
    settings = load_settings(environ={}, overrides={"model": {"checkpoints": [str(checkpoint)]}})
    return load_model(settings).engine


def _node(workdir: Path, checkpoint: Path, orthanc: OrthancPeer, heat_maps: int = 3,
          **outbound) -> NodeProcess:
    model: dict[str, object] = {"checkpoints": [str(checkpoint)], "batch_size": 4}
    if checkpoint.name == "random.pt":
        model["name"] = "random-test-weights"
    node = NodeProcess.create(
        workdir,
        worklist={"stable_seconds": 1, "assembly_interval_seconds": 0.25},
        model=model,
        worker={"enabled": True, "poll_interval_seconds": 2, "heat_maps_per_study": heat_maps},
        outbound={"poll_interval_seconds": 1, **outbound},
    )
    with node.config_path.open("a") as f:
        f.write(
            "\n[[destinations]]\n"
            f'name = "pacs"\nae_title = "{orthanc.ae_title}"\nhost = "127.0.0.1"\n'
            f"port = {orthanc.dicom_port}\nconnect_timeout_seconds = 5\n"
        )
    return node


def _send(node: NodeProcess, directory: Path, *datasets) -> None:
    paths = [write(ds, directory / f"{ds.SOPInstanceUID}.dcm") for ds in datasets]
    result = storescu(node.port, paths, called_ae=node.ae_title)
    assert result.returncode == 0, result.stdout + result.stderr


def _fetch(orthanc: OrthancPeer, study_uid: str, sop_class: str, tmp_path: Path) -> list[Path]:
    """Files of the study's instances of `sop_class` in Orthanc, oldest instance number first."""
    found = sorted(
        (i for i in orthanc.study_instances(study_uid) if i.get("SOPClassUID") == sop_class),
        key=lambda i: int(i.get("InstanceNumber", 0)),
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for instance in found:
        path = tmp_path / f"{instance['ID']}.dcm"
        path.write_bytes(orthanc.get_bytes(f"/instances/{instance['ID']}/file"))
        paths.append(path)
    return paths


def _wait_for_objects(node, orthanc, study_uid, count_sr, count_sc, what):
    def arrived():
        classes = Counter(i.get("SOPClassUID") for i in orthanc.study_instances(study_uid))
        return (classes[SR_CLASS] >= count_sr and classes[SC_CLASS] >= count_sc
                and classes[TEXT_CLASS] >= count_sr)

    try:
        node.wait_for(arrived, what, timeout=120)
    except AssertionError:
        raise AssertionError(f"{what}: node log:\n{node.log()[-4000:]}") from None


def _groups(path: Path):
    report = hd.sr.srread(path)
    return report, report.content.get_image_measurement_groups()


def _decisions(groups) -> dict[str, tuple[float, float, str]]:
    found = {}
    for group in groups:
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        (decision,) = group.get_qualitative_evaluations()
        label = group.tracking_identifier
        found[label] = (values["Certainty of Finding"], values["Decision threshold"],
                        decision.value.meaning)
    return found


def test_study_in_findings_and_summary_out_in_orthanc(tmp_path, checkpoint, engine):
    orthanc = OrthancPeer(tmp_path / "orthanc").start()
    node = _node(tmp_path / "node", checkpoint, orthanc)
    try:
        node.start()
        study = StudyUids()
        pa = make_radiograph(view="PA", study=study, seed=1, rows=256, columns=208)
        lateral = make_radiograph(view="LL", study=study, seed=2, instance_number=2)
        ap = make_radiograph(view="AP", study=study, seed=3, instance_number=3)
        _send(node, tmp_path / "modality", pa, lateral, ap)
        _wait_for_objects(node, orthanc, study.study, 1, 1, "the SR and summary in Orthanc")
        _wait_until_sent(node)

        (sr_path,) = _fetch(orthanc, study.study, SR_CLASS, tmp_path)
        images = _fetch(orthanc, study.study, SC_CLASS, tmp_path)
        (sc_path,) = _series(images, SUMMARY_SERIES_NUMBER)
        overlays = _series(images, HEATMAP_SERIES_NUMBER)
        (text_path,) = _fetch(orthanc, study.study, TEXT_CLASS, tmp_path)
        _check_sr(sr_path, study, engine, pa, ap, lateral)
        _check_summary(sc_path, study, pa, ap)
        _check_text_report(text_path, sr_path)
        expected_overlays = _called(sr_path)
        assert len(overlays) == expected_overlays  # one per finding called present, up to 3
        checked = [("SR", sr_path), ("summary", sc_path), ("text report", text_path)]
        checked += [("overlay", p) for p in overlays]
        for kind, path in checked:
            errors, warnings = dciodvfy(path)
            assert errors == [], errors
            print(f"dciodvfy {kind}: 0 errors, warnings {dict(Counter(warnings))}")

        # issue 6: a profile activated while the node runs changes the next SR's decisions
        second_sr = _check_profile_change(node, orthanc, study, tmp_path, sr_path)
        _wait_until_sent(node)
        deliveries = node.cli_json("outbound", "list")
        assert {d["state"] for d in deliveries} == {"SENT"}
        kinds = Counter(d["kind"] for d in deliveries)
        assert kinds == Counter(sr=2, summary=2, text=2,
                                heatmap=expected_overlays + _called(second_sr))
    finally:
        node.stop()
        orthanc.stop()


def _wait_until_sent(node) -> None:
    node.wait_for(lambda: {d["state"] for d in node.cli_json("outbound", "list")} == {"SENT"},
                  "every delivery SENT")


def _series(paths: list[Path], number: int) -> list[Path]:
    return [p for p in paths if pydicom.dcmread(p, stop_before_pixels=True).SeriesNumber == number]


def _called(sr_path: Path) -> int:
    """How many attention-map overlays the SR's decisions call for: one per prompt-scored
    finding called present (No Finding is derived), at most 3."""
    decisions = _decisions(_groups(sr_path)[1])
    return min(3, sum(d == "Present" for label, (_, _, d) in decisions.items()
                      if label != "No Finding"))


def _check_sr(path, study, engine, pa, ap, lateral):
    report, groups = _groups(path)
    assert report.StudyInstanceUID == study.study
    assert report.ContentQualification == "RESEARCH"
    assert "NOT FOR CLINICAL USE" in report.SeriesDescription
    comments = [i.TextValue for i in report.ContentSequence if i.ValueType == "TEXT"
                and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comments and comments[0].startswith("NOT FOR CLINICAL USE")
    images = engine.score_uint8([dataset_to_uint8(pa), dataset_to_uint8(ap)])
    expected = apply_derived(images.mean(axis=0)[None], engine.labels, engine.catalogue)[0]
    decisions = _decisions(groups)
    assert list(decisions) == list(engine.labels)
    for (certainty, threshold, decision), p in zip(decisions.values(), expected, strict=True):
        assert certainty == pytest.approx(p * 100, abs=1e-3)
        assert decision == ("Present" if certainty >= threshold else "Absent")
    referenced = {img.referenced_sop_instance_uid for img in groups[0].source_images}
    assert referenced == {pa.SOPInstanceUID, ap.SOPInstanceUID}
    assert lateral.SOPInstanceUID not in referenced
    assert groups[0].finding_type.value  # coded from the catalogue


def _check_summary(path, study, pa, ap):
    sc = pydicom.dcmread(path)
    assert sc.StudyInstanceUID == study.study
    assert (sc.PhotometricInterpretation, sc.BitsAllocated) == ("MONOCHROME2", 8)
    assert sc.ImageComments.startswith("NOT FOR CLINICAL USE")
    assert {i.ReferencedSOPInstanceUID for i in sc.SourceImageSequence} == {
        pa.SOPInstanceUID, ap.SOPInstanceUID}
    assert np.asarray(sc.pixel_array).std() > 10  # a rendered table, not a blank image


def _check_text_report(path, sr_path):
    """The text report says what the findings SR says, in lines a reader sees, present first."""
    report = pydicom.dcmread(path)
    assert (report.SeriesDate, report.SeriesTime) == (report.ContentDate, report.ContentTime)
    assert report.ContentSequence[0].TextValue.startswith("NOT FOR CLINICAL USE")
    findings = report.ContentSequence[1]
    lines = [item.TextValue for item in findings.ContentSequence]
    decisions = _decisions(_groups(sr_path)[1])
    expected = sorted(decisions.items(), key=lambda item: item[1][2] != "Present")
    assert [line.split(":")[0] for line in lines] == [label for label, _ in expected]
    for line, (_label, (certainty, threshold, decision)) in zip(lines, expected, strict=True):
        assert (": PRESENT," in line) == (decision == "Present")
        _head, score, cutoff = line.split(", ")
        assert float(score.removeprefix("score ")) == pytest.approx(certainty / 100, abs=5e-3)
        assert float(cutoff.removeprefix("threshold ")) == pytest.approx(threshold / 100, abs=5e-3)


def _check_profile_change(node, orthanc, study, tmp_path, first_sr):
    before = _decisions(_groups(first_sr)[1])
    # a finding whose score leaves room on both sides for a valid threshold
    label, (certainty, _threshold, decision) = next(
        (k, v) for k, v in before.items() if 15 < v[0] < 85)
    flipped = round(certainty / 100 + (0.002 if decision == "Present" else -0.002), 4)
    result = run_cli("thresholds", "set", label, f"{flipped:.4f}", "--author", "e2e",
                     "--config", str(node.config_path))
    assert result.returncode == 0, result.stderr
    # a late lateral view reopens the study; the scored images and probabilities stay the same
    late = make_radiograph(view="LL", study=study, seed=4, instance_number=4)
    _send(node, tmp_path / "late", late)
    _wait_for_objects(node, orthanc, study.study, 2, 2, "the superseding SR in Orthanc")

    old, new = _fetch(orthanc, study.study, SR_CLASS, tmp_path / "second")  # by instance number
    after = _decisions(_groups(new)[1])
    assert after[label][0] == pytest.approx(certainty)
    assert after[label][1] == pytest.approx(flipped * 100, abs=1e-3)
    assert after[label][2] != decision
    report = pydicom.dcmread(new)
    assert report.InstanceNumber == 2
    predecessor = report.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        pydicom.dcmread(old).SOPInstanceUID)
    assert f"threshold={flipped:.3f};profile=v2" in _parameters(new)
    return new


def _parameters(path) -> str:
    _, groups = _groups(path)
    return " ".join(i.TextValue for g in groups for i in g[0].ContentSequence
                    if i.ConceptNameCodeSequence[0].CodeValue == "111002")


def test_pacs_down_at_first_gets_every_object_exactly_once(tmp_path):
    random = write_random_checkpoint(tmp_path / "random.pt", seed=6)
    orthanc = OrthancPeer(tmp_path / "orthanc", dicom_port=free_port(), http_port=free_port())
    # issue 11: the destination is probed (not each object retried) and an outage never makes
    # an object DEAD, even with max_attempts = 1
    node = _node(tmp_path / "node", random, orthanc, heat_maps=0, probe_initial_delay_seconds=0.5,
                 probe_max_delay_seconds=1, max_attempts=1)
    try:
        node.start()
        study = StudyUids()
        _send(node, tmp_path / "modality", make_radiograph(view="PA", study=study))

        def probed_while_down():
            (pacs,) = node.cli_json("destinations", "list")
            return pacs["state"] == "down" and len(node.events("probe_failed")) >= 2 and pacs
        pacs = node.wait_for(probed_while_down, "probes while Orthanc is down")
        assert "connection refused by ORTHANC@127.0.0.1" in pacs["last_error"]
        rows = node.cli_json("outbound", "list")
        # the SR was tried once; the summary, if queued after the PACS was found down, waits
        # untried: while down only C-ECHO probes go out
        attempts = {r["kind"]: (r["state"], r["attempts"]) for r in rows}
        assert attempts["sr"] == ("PENDING", 1)
        assert attempts["summary"] in {("PENDING", 0), ("PENDING", 1)}
        assert attempts["text"] in {("PENDING", 0), ("PENDING", 1)}
        assert pacs["pending"] == 3
        studies = node.cli_json("studies", "list")
        assert [s["state"] for s in studies] == ["DONE"]  # inference did not wait for the PACS

        orthanc.start()
        _wait_for_objects(node, orthanc, study.study, 1, 1, "delivery once Orthanc is up")
        node.wait_for(lambda: {r["state"] for r in node.cli_json("outbound", "list")} == {"SENT"},
                      "all three deliveries SENT")
        assert orthanc.instance_count() == 3
        sent = Counter(e["sop_instance_uid"] for e in node.events("delivery_sent"))
        assert sorted(sent.values()) == [1, 1, 1]  # each object acknowledged exactly once
        (up,) = node.events("destination_up")
        assert (up["by"], up["pending_now_due"]) == ("C-ECHO", 3)  # SR, summary, text report
        # the outage is told once per probe in the node's words, not in pynetdicom's as well
        assert "TCP Initialisation Error" not in node.log()
        assert "Association request failed" not in node.log()
    finally:
        node.stop()
        orthanc.stop()
