"""The inference worker on a real work list, spool and engine (a tiny random checkpoint)."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime, timedelta

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.settings import load_settings
from dicom_node.worker import Worker, aggregate, load_model, outbox_for
from ml.catalogue import apply_derived
from ml.dicom_image import dataset_to_uint8
from ml.testing import write_random_checkpoint
from storage import outbound, profiles, results, worklist
from storage.models import OutboundState
from storage.spool import Spool
from storage.states import StudyState
from storage.worklist import InstanceRecord
from tests.dicom_factory import StudyUids, make_radiograph


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 5) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", seed=3)


@pytest.fixture(scope="module")
def model(checkpoint, tmp_path_factory):
    settings = load_settings(environ={}, overrides={"model": {"checkpoints": [str(checkpoint)]}})
    return load_model(settings)


@pytest.fixture
def node(tmp_path, checkpoint, any_database, model):
    """A node on SQLite and on PostgreSQL (every test using it runs on both)."""
    database = any_database
    settings = load_settings(
        environ={},
        overrides={
            "node": {"data_dir": str(tmp_path / "data")},
            "model": {"checkpoints": [str(checkpoint)], "name": "tiny-test"},
            "worklist": {"stable_seconds": 1, "max_attempts": 2, "retry_delay_seconds": 1},
            "worker": {"heat_maps_per_study": 0},  # tests/test_report_heatmap.py has them
        },
    )
    settings = _with_destination(settings)
    return _Node(settings, database, model)


def _with_destination(settings):
    from dataclasses import replace

    from dicom_node.settings import DestinationSettings

    pacs = DestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=1)
    archive = DestinationSettings(name="archive", ae_title="ARCH", host="127.0.0.1", port=2,
                                  send_summary=False)
    return replace(settings, destinations=[pacs, archive])


class _Node:
    """A work list, spool and outbox with a worker, driven by hand (no threads)."""

    def __init__(self, settings, database, model) -> None:
        self.settings, self.database, self.clock = settings, database, Clock()
        self.spool = Spool(settings.spool_path)
        self.spool.prepare()
        self.outbox = outbox_for(settings)
        self.woken = 0
        self.worker = Worker(
            settings=settings, database=database, spool=self.spool, outbox=self.outbox,
            clock=self.clock, model_loader=lambda _settings: model, on_result=self._woken,
        )

    def _woken(self) -> None:
        self.woken += 1

    def receive(self, *datasets) -> None:
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            entry = self.spool.write(ds.StudyInstanceUID, ds.SOPInstanceUID, [buffer.getvalue()])
            with self.database.sessions.begin() as session:
                worklist.record_instance(session, _record(ds, entry), self.clock())

    def process(self):
        self.clock.advance(5)
        with self.database.sessions.begin() as session:
            worklist.queue_stable_studies(session, 1, self.clock())
        return self.worker.run_once()

    def results(self, study_uid):
        with self.database.read_only() as session:
            return results.results_for_study(session, study_uid)

    def deliveries(self):
        with self.database.read_only() as session:
            return outbound.list_deliveries(session)

    def study(self, study_uid):
        with self.database.read_only() as session:
            return worklist.study_detail(session, study_uid)[0]


def _record(ds, entry) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=ds.SOPInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
        study_instance_uid=ds.StudyInstanceUID, sop_class_uid=ds.SOPClassUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID, modality=ds.Modality,
        body_part_examined=ds.get("BodyPartExamined"), view_position=ds.get("ViewPosition"),
        spool_path=entry.relative_path, size_bytes=entry.size_bytes, calling_ae_title="MOD",
    )


def test_study_is_scored_reported_and_queued_per_destination(node, model):
    study = StudyUids()
    pa = make_radiograph(view="PA", study=study, seed=1)
    ap = make_radiograph(view="AP", study=study, seed=2, instance_number=2)
    lateral = make_radiograph(view="LL", study=study, seed=3, instance_number=3)
    node.receive(pa, ap, lateral)

    outcome = node.process()

    assert outcome.state is StudyState.DONE
    (result,) = node.results(study.study)
    images = model.engine.score_uint8([dataset_to_uint8(pa), dataset_to_uint8(ap)])
    # No Finding (derived) is 1 - the highest study-level score, not a mean of the images' own
    expected = apply_derived(images.mean(0)[None], model.engine.labels, model.catalogue)[0]
    assert [f.label for f in result.findings] == list(model.engine.labels)
    assert [f.probability for f in result.findings] == pytest.approx(expected.tolist())
    assert all(f.present == (f.probability >= f.threshold) for f in result.findings)
    scored = {i.sop_instance_uid: i for i in result.images}
    assert scored[lateral.SOPInstanceUID].eligible is False
    assert "lateral" in scored[lateral.SOPInstanceUID].reason
    assert set(scored[pa.SOPInstanceUID].scores) == set(model.engine.labels)
    assert (result.profile_version, result.aggregation, result.model_name) == (1, "mean", "tiny-test")
    kinds = sorted((d.destination, d.kind) for d in node.deliveries())
    assert kinds == [("archive", "sr"), ("archive", "text"), ("pacs", "sr"), ("pacs", "summary"),
                     ("pacs", "text")]
    assert node.woken == 2  # once for the SR, once more for the summary and text report


def test_sr_in_the_outbox_holds_the_stored_result(node):
    study = StudyUids()
    pa = make_radiograph(view="PA", study=study)
    node.receive(pa)
    node.process()
    (result,) = node.results(study.study)
    sr_path = node.outbox.absolute(
        node.outbox.relative_path(study.study, result.sr_sop_instance_uid))
    report = hd.sr.srread(sr_path)
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == len(result.findings)
    certainty = {m.name.meaning: m.value for m in groups[0].get_measurements()}
    assert certainty["Certainty of Finding"] == pytest.approx(
        result.findings[0].probability * 100, abs=1e-3)
    assert report.StudyInstanceUID == study.study
    assert report.ContentQualification == "RESEARCH"  # demo settings: clinical_use = false


def test_study_without_frontal_image_is_skipped_with_reason(node):
    from dataclasses import replace  # the "not analysed" report: tests/test_report_skipped.py

    node.worker.settings = replace(
        node.settings, worker=replace(node.settings.worker, report_skipped=False)
    )
    study = StudyUids()
    node.receive(make_radiograph(view="LL", study=study))
    outcome = node.process()
    assert outcome.state is StudyState.SKIPPED
    assert "lateral view" in node.study(study.study).skip_reason
    assert node.results(study.study) == []
    assert node.deliveries() == []


def test_unreadable_spool_file_fails_the_study_without_blocking_the_next(node):
    broken, good = StudyUids(), StudyUids()
    node.receive(make_radiograph(study=broken))
    for path in node.spool.absolute(broken.study).iterdir():
        path.write_bytes(b"not dicom at all")
    node.receive(make_radiograph(study=good))

    first, second = node.process(), node.process()

    assert first.state is StudyState.FAILED  # not DICOM: retrying cannot help
    assert "InvalidDicomError" in node.study(broken.study).last_error
    assert second.state is StudyState.DONE


def test_transient_error_is_retried_then_failed_after_max_attempts(node, model):
    class FlakyEngine:
        def __init__(self, engine, failures):
            self.engine, self.failures = engine, failures
            self.labels, self.identity = engine.labels, engine.identity

        def score_uint8_with_embeddings(self, images, **options):
            if self.failures:
                self.failures -= 1
                raise RuntimeError("CUDA out of memory (injected)")
            return self.engine.score_uint8_with_embeddings(images, **options)

    node.worker._model = type(model)(FlakyEngine(model.engine, failures=1), model.catalogue)
    study = StudyUids()
    node.receive(make_radiograph(study=study))
    assert node.process().state is StudyState.QUEUED  # attempt 1 of 2 failed: back in the queue
    assert node.process().state is StudyState.DONE

    node.worker._model = type(model)(FlakyEngine(model.engine, failures=5), model.catalogue)
    other = StudyUids()
    node.receive(make_radiograph(study=other))
    node.process()
    assert node.process().state is StudyState.FAILED
    detail = node.study(other.study)
    assert detail.attempts == 2 and "injected" in detail.last_error


def test_late_instance_makes_a_new_sr_that_supersedes_the_first(node):
    study = StudyUids()
    node.receive(make_radiograph(view="PA", study=study, seed=1))
    node.process()
    node.receive(make_radiograph(view="AP", study=study, seed=2, instance_number=2))
    assert node.process().version == 2

    first, second = node.results(study.study)
    assert second.supersedes_id == first.id
    assert second.sr_sop_instance_uid != first.sr_sop_instance_uid
    assert second.sr_series_instance_uid == first.sr_series_instance_uid
    sr = pydicom.dcmread(node.outbox.absolute(
        node.outbox.relative_path(study.study, second.sr_sop_instance_uid)))
    predecessor = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        first.sr_sop_instance_uid)
    assert sr.InstanceNumber == 2
    assert len(node.deliveries()) == 10  # 5 (object, destination) pairs per version
    text = pydicom.dcmread(node.outbox.absolute(
        node.outbox.relative_path(study.study, second.text_sop_instance_uid)))
    predecessor = text.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        first.text_sop_instance_uid)
    assert text.SeriesInstanceUID == first.text_series_instance_uid
    assert text.InstanceNumber == 2


def test_late_ineligible_instance_changes_nothing_and_sends_nothing_twice(node):
    study = StudyUids()
    node.receive(make_radiograph(view="PA", study=study))
    node.process()
    node.receive(make_radiograph(view="LL", study=study, instance_number=2))
    outcome = node.process()
    assert (outcome.state, outcome.version) == (StudyState.DONE, 1)
    assert len(node.results(study.study)) == 1
    assert len(node.deliveries()) == 5


def test_summary_image_lost_after_the_sr_was_queued_is_rendered_on_the_retry(node, monkeypatch):
    import dicom_node.worker as worker_module

    def crash(*_args, **_kwargs):
        raise OSError("disk full")

    study = StudyUids()
    node.receive(make_radiograph(view="PA", study=study))
    with monkeypatch.context() as patched:
        patched.setattr(worker_module, "write_summary", crash)
        assert node.process().state is StudyState.QUEUED
    assert sorted(d.kind for d in node.deliveries()) == ["sr", "sr"]  # the SR went out first

    assert node.process().state is StudyState.DONE
    (result,) = node.results(study.study)
    kinds = sorted((d.destination, d.kind) for d in node.deliveries())
    assert kinds == [("archive", "sr"), ("archive", "text"), ("pacs", "sr"), ("pacs", "summary"),
                     ("pacs", "text")]
    summary = pydicom.dcmread(node.outbox.absolute(
        node.outbox.relative_path(study.study, result.summary_sop_instance_uid)))
    assert summary.SeriesInstanceUID == result.summary_series_instance_uid
    assert summary.InstanceNumber == 1 and summary.Rows > 0
    text = pydicom.dcmread(node.outbox.absolute(
        node.outbox.relative_path(study.study, result.text_sop_instance_uid)))
    assert text.SeriesInstanceUID == result.text_series_instance_uid
    assert text.InstanceNumber == 1 and "PredecessorDocumentsSequence" not in text


def test_text_report_names_every_finding_and_the_image_left_out(node):
    study = StudyUids()
    node.receive(make_radiograph(view="PA", study=study, seed=1),
                 make_radiograph(view="LL", study=study, seed=2, instance_number=2))
    node.process()
    (result,) = node.results(study.study)
    text = pydicom.dcmread(node.outbox.absolute(
        node.outbox.relative_path(study.study, result.text_sop_instance_uid)))
    lines = _text_lines(text)
    assert lines[0].startswith("NOT FOR CLINICAL USE")
    expected = sorted(result.findings, key=lambda f: not f.present)  # present first
    for line, finding in zip(lines[1:], expected):
        head, score, threshold = line.split(", ")
        assert head == f"{finding.label}: {'PRESENT' if finding.present else 'absent'}"
        assert float(score.removeprefix("score ")) == pytest.approx(finding.probability, abs=5e-3)
        assert float(threshold.removeprefix("threshold ")) == pytest.approx(finding.threshold,
                                                                            abs=5e-3)
    assert any(line.startswith("Images: 1 of 2 images scored (PA); not used: lateral view")
               for line in lines)
    assert "Analysed 2024-06-01 08:00 UTC" in lines
    assert "DICOM to 8-bit: equalize (histogram equalisation, as MIMIC-CXR-JPG was made)" in lines


def _text_lines(report):
    """Every TEXT value of a text report's content (not its observer context), in reading
    order."""
    found = []
    for item in report.ContentSequence:
        if item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS":
            found.append(item.TextValue)
        found += _text_lines(item) if "ContentSequence" in item else []
    return found


def test_activated_profile_changes_the_next_decision_and_is_recorded(node):
    study = StudyUids()
    node.receive(make_radiograph(view="PA", study=study))
    node.process()
    (first,) = node.results(study.study)
    finding = first.findings[0]
    flipped = finding.probability + 0.01 if finding.present else finding.probability - 0.01
    with node.database.sessions.begin() as session:
        version = profiles.derive_profile(session, {finding.label: flipped}, author="test",
                                          method="set").version
        profiles.activate(session, version, by="test")
    node.receive(make_radiograph(view="AP", study=study, instance_number=2, seed=9))
    node.process()

    second = node.results(study.study)[-1]
    assert second.profile_version == version
    assert second.findings[0].threshold == pytest.approx(flipped)
    sr = hd.sr.srread(node.outbox.absolute(
        node.outbox.relative_path(study.study, second.sr_sop_instance_uid)))
    group = sr.content.get_image_measurement_groups()[0]
    parameters = [i.TextValue for i in group[0].ContentSequence
                  if i.ConceptNameCodeSequence[0].CodeValue == "111002"]
    assert f"threshold={flipped:.3f};profile=v{version}" in parameters


@pytest.mark.parametrize(
    ("rule", "expected"), [("mean", [0.5, 0.3]), ("max", [0.8, 0.4])]
)
def test_aggregation_rules(rule, expected):
    scores = np.array([[0.2, 0.4], [0.8, 0.2]])
    assert aggregate(scores, rule).tolist() == pytest.approx(expected)


def test_pending_deliveries_survive_for_the_sender(node):
    study = StudyUids()
    node.receive(make_radiograph(study=study))
    node.process()
    assert {d.state for d in node.deliveries()} == {OutboundState.PENDING}
    for d in node.deliveries():
        assert (node.outbox.root / d.file_path).is_file()


def test_without_a_model_studies_wait_in_the_queue(node, caplog):
    def missing(_settings):
        raise FileNotFoundError("dicom_node/shipped/models/demo-synthetic-v2.pt")

    worker = Worker(settings=node.settings, database=node.database, spool=node.spool,
                    outbox=node.outbox, clock=node.clock, model_loader=missing)
    study = StudyUids()
    node.receive(make_radiograph(study=study))
    node.clock.advance(5)
    with node.database.sessions.begin() as session:
        worklist.queue_stable_studies(session, 1, node.clock())
    with caplog.at_level("ERROR"):
        worker.start()
        try:
            deadline = time.monotonic() + 10
            while not any(getattr(r, "dicom_node_event", "") == "model_unavailable"
                          for r in caplog.records) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            worker.stop()
    assert any("demo-synthetic-v2.pt" in str(getattr(r, "dicom_node_fields", {}))
               for r in caplog.records)
    assert node.study(study.study).state is StudyState.QUEUED


def test_worker_that_lost_its_lease_leaves_the_study_to_the_new_holder(node, model):
    class SlowThenBroken:
        """Scoring takes longer than the lease; meanwhile another worker claims the study."""

        labels, identity = model.engine.labels, model.engine.identity

        def score_uint8_with_embeddings(self, images, **options):
            node.clock.advance(node.settings.worklist.lease_seconds + 1)
            with node.database.sessions.begin() as session:
                worklist.requeue_expired(session, node.clock(), max_attempts=5)
                worklist.claim_next(session, "other-worker", 600, node.clock())
            raise RuntimeError("too slow (injected)")

    node.worker._model = type(model)(SlowThenBroken(), model.catalogue)
    study = StudyUids()
    node.receive(make_radiograph(study=study))
    outcome = node.process()
    assert outcome.state is None  # nothing recorded by the worker that lost the lease
    detail = node.study(study.study)
    assert (detail.state, detail.worker_id) == (StudyState.PROCESSING, "other-worker")
    assert node.results(study.study) == []
