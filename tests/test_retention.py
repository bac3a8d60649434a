"""Retention: delivered studies lose their files `delivered_days` after delivery and their rows
`worklist_days` after it; undelivered work is never touched; disk pressure purges the oldest
delivered studies before a C-STORE is refused; `dicom-node purge --dry-run` changes nothing."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from dicom_node.retention import Retention
from dicom_node.settings import RetentionSettings
from storage import outbound, results, worklist
from storage.db import Database, open_database
from storage.retention import Action, RetentionPolicy, StudyFacts, judge
from storage.spool import Spool
from storage.states import StudyState
from tests.dicom_factory import make_radiograph, write
from tests.peers import run_cli, store_responses, storescu

NOW = datetime(2024, 6, 30, 12, 0, tzinfo=UTC)
POLICY = RetentionPolicy(delivered_days=7, worklist_days=365)
DX = "1.2.840.10008.5.1.4.1.1.1.1"


# --- the rules, as a table (pure, clock injected) -----------------------------------------------


def facts(finished_days=10.0, state=StudyState.DONE, sent_days=None, pending=0, dead=0, sent=0,
          purged_days=None, arrived_days=None) -> StudyFacts:
    ago = lambda days: None if days is None else NOW - timedelta(days=days)
    arrived = finished_days + 0.01 if arrived_days is None else arrived_days
    return StudyFacts(1, "1.2.3", state, ago(finished_days), ago(arrived), ago(purged_days),
                      1000, pending=pending, dead=dead, sent=sent, last_sent_at=ago(sent_days))


RULES = [
    # (facts, expected action, why)
    (facts(sent=2, sent_days=8), Action.PURGE_FILES, "all SENT 8 days ago"),
    (facts(sent=2, sent_days=6.9), Action.KEEP, "all SENT, not yet 7 days"),
    (facts(sent=2, sent_days=7), Action.PURGE_FILES, "exactly 7 days"),
    (facts(sent=1, pending=1, sent_days=30), Action.KEEP, "one delivery still PENDING"),
    (facts(sent=1, dead=1, sent_days=30), Action.KEEP, "one delivery DEAD"),
    (facts(finished_days=8), Action.PURGE_FILES, "nothing to deliver, finished 8 days ago"),
    (facts(finished_days=3), Action.KEEP, "nothing to deliver, finished 3 days ago"),
    (facts(9, state=StudyState.SKIPPED), Action.PURGE_FILES, "skipped, no result"),
    (facts(400, state=StudyState.FAILED), Action.KEEP, "FAILED: admin may retry"),
    (facts(400, state=StudyState.QUEUED), Action.KEEP, "not finished"),
    (facts(400, state=StudyState.PROCESSING), Action.KEEP, "not finished"),
    (facts(400, state=StudyState.RECEIVING), Action.KEEP, "not finished"),
    (facts(31, sent=2, sent_days=30, purged_days=20), Action.KEEP, "purged; rows kept"),
    (facts(367, sent=2, sent_days=366, purged_days=300), Action.DELETE_ROWS, "past worklist_days"),
    (facts(367, sent=2, sent_days=366), Action.PURGE_FILES, "files first, rows on a later run"),
    (facts(31, sent=2, sent_days=30, purged_days=20, arrived_days=10), Action.PURGE_FILES,
     "a late instance after the purge: its file goes too"),
]


@pytest.mark.parametrize(("study", "expected", "why"), RULES, ids=[r[2] for r in RULES])
def test_rules(study: StudyFacts, expected: Action, why: str) -> None:
    assert judge(study, POLICY, NOW).action is expected, why


def test_disk_pressure_ignores_age_but_never_undelivered_work() -> None:
    assert judge(facts(sent=1, sent_days=0.1), POLICY, NOW, ignore_age=True).action \
        is Action.PURGE_FILES
    for undelivered in (facts(sent=1, pending=1), facts(dead=1), facts(state=StudyState.FAILED),
                        facts(state=StudyState.QUEUED)):
        assert judge(undelivered, POLICY, NOW, ignore_age=True).action is Action.KEEP


# --- seeded work lists (real SQLite, real files) ------------------------------------------------


@dataclass
class Seeded:
    uid: str
    spool_files: list[Path]
    outbox_files: list[Path]

    def files(self) -> list[Path]:
        return self.spool_files + self.outbox_files


def seed(database: Database, data_dir: Path, outcome: str, when: datetime, *,
         images: int = 1, size: int = 4096, destinations=("pacs",), dataset=None) -> Seeded:
    """A study that reached `outcome` at `when`: received, processed, a result, deliveries.
    outcome: sent | pending | dead | failed | queued | skipped. Files hold filler bytes (the
    purge only deletes them), or `dataset`'s file (one image, its UIDs)."""
    spool, outbox = Spool(data_dir / "spool"), Spool(data_dir / "outbox")
    study = generate_uid() if dataset is None else dataset.StudyInstanceUID
    spooled = []
    with database.sessions.begin() as session:
        for _ in range(images):
            sop = generate_uid() if dataset is None else dataset.SOPInstanceUID
            content = os.urandom(size) if dataset is None else dataset.read_bytes()
            entry = spool.write(study, sop, [content])
            spooled.append(entry.path)
            worklist.record_instance(session, worklist.InstanceRecord(
                sop, generate_uid(), study, DX, "1.2.840.10008.1.2.1", "DX", "CHEST", "PA",
                entry.relative_path, entry.size_bytes, "MOD"), when - timedelta(minutes=5))
        worklist.queue_stable_studies(session, 0, when - timedelta(minutes=4))
    if outcome == "queued":
        return Seeded(study, spooled, [])
    with database.sessions.begin() as session:
        claimed = worklist.claim_next(session, "w", 600, when - timedelta(minutes=3))
        if outcome == "failed":
            worklist.fail(session, claimed.study_id, "w", "boom", when, 1, permanent=True)
            return Seeded(study, spooled, [])
        if outcome == "skipped":
            worklist.skip(session, claimed.study_id, "w", "no frontal image", when)
            return Seeded(study, spooled, [])
        written = _result(session, outbox, claimed.study_id, study, when, destinations)
        worklist.complete(session, claimed.study_id, "w", when)
    _deliver(database, outcome, when)
    return Seeded(study, spooled, written)


def _result(session, outbox: Spool, study_id: int, study: str, when: datetime,
            destinations) -> list[Path]:
    sr, summary = generate_uid(), generate_uid()
    written = [outbox.write(study, uid, [b"result " * 100]) for uid in (sr, summary)]
    result_id = results.add_result(session, results.NewResult(
        study_id=study_id, study_instance_uid=study, result_key=generate_uid(), version=1,
        supersedes_id=None, worker_id="w", model_name="m", checkpoint_sha256s=("0" * 64,),
        catalogue_version="c", clinical_use=False, profile_version=1, aggregation="mean",
        sr_series_instance_uid=generate_uid(), sr_sop_instance_uid=sr,
        summary_series_instance_uid=generate_uid(), summary_sop_instance_uid=summary,
        findings=(), images=()), when)
    outbound.enqueue(session, result_id, [
        outbound.NewDelivery(name, kind, study, entry.path.stem, DX, entry.relative_path)
        for name in destinations for kind, entry in zip(("sr", "summary"), written, strict=True)
    ], when)
    return [entry.path for entry in written]


def _deliver(database: Database, outcome: str, when: datetime) -> None:
    """Settle every PENDING delivery as `outcome` says (sent, dead; pending leaves them)."""
    with database.sessions.begin() as session:
        for delivery in outbound.list_deliveries(session):
            if delivery.state is not outbound.OutboundState.PENDING or outcome == "pending":
                continue
            if outcome == "sent":
                outbound.mark_sent(session, delivery.id, when + timedelta(minutes=1))
            else:
                outbound.mark_failed(session, delivery.id, "refused", None, when)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def node_db(data_dir: Path):
    db = open_database(f"sqlite:///{data_dir / 'worklist.sqlite'}")
    yield db
    db.dispose()


def retention_at(db: Database, data_dir: Path, now: datetime, **settings) -> Retention:
    return Retention(db, Spool(data_dir / "spool"), Spool(data_dir / "outbox"),
                     RetentionSettings(**settings), lambda: now)


def study_of(db: Database, uid: str):
    with db.read_only() as session:
        detail = worklist.study_detail(session, uid)
    return None if detail is None else detail[0]


def test_purges_exactly_the_delivered_studies_older_than_n_days(node_db, data_dir) -> None:
    old = [seed(node_db, data_dir, "sent", NOW - timedelta(days=d)) for d in (8, 30)]
    no_destination = seed(node_db, data_dir, "sent", NOW - timedelta(days=9), destinations=())
    young = seed(node_db, data_dir, "sent", NOW - timedelta(days=6))
    kept = [seed(node_db, data_dir, outcome, NOW - timedelta(days=40))
            for outcome in ("pending", "dead", "failed", "queued")]

    report = retention_at(node_db, data_dir, NOW).run()

    purged = {s.uid for s in (*old, no_destination)}
    assert {i.study_instance_uid for i in report.items} == purged
    for study in (*old, no_destination):
        assert not any(p.exists() for p in study.files())
        row = study_of(node_db, study.uid)
        assert row.purged_at == NOW and row.purge_reason == "retention"
        assert row.purged_files == len(study.files())
        assert row.purged_bytes == sum(4096 if p in study.spool_files else 700
                                       for p in study.files())
        assert not (data_dir / "spool" / study.uid).exists()
    for study in (young, *kept):
        assert all(p.is_file() for p in study.files()), study
        assert study_of(node_db, study.uid).purged_at is None
    assert report.size_bytes == sum(study_of(node_db, u).purged_bytes for u in purged)


def test_rows_go_after_worklist_days_and_a_resent_purged_study_keeps_its_files(
    node_db, data_dir
) -> None:
    gone = seed(node_db, data_dir, "sent", NOW - timedelta(days=400))
    resent = seed(node_db, data_dir, "sent", NOW - timedelta(days=400))
    with node_db.sessions.begin() as session:  # an admin resends one: PENDING again
        outbound.resend(session, resent.uid, {"pacs": {"sr"}}, NOW - timedelta(days=1))

    first = retention_at(node_db, data_dir, NOW).run()
    assert [(i.study_instance_uid, i.action) for i in first.items] == [(gone.uid, "files")]
    assert all(p.is_file() for p in resent.files())

    later = NOW + timedelta(hours=1)
    second = retention_at(node_db, data_dir, later).run()
    assert [(i.study_instance_uid, i.action) for i in second.items] == [(gone.uid, "rows")]
    assert study_of(node_db, gone.uid) is None
    with node_db.read_only() as session:
        assert results.results_for_study(session, gone.uid) == []
    assert study_of(node_db, resent.uid).purged_at is None


def test_a_late_instance_for_a_purged_study_is_processed_alone(node_db, data_dir) -> None:
    study = seed(node_db, data_dir, "sent", NOW - timedelta(days=10), images=2)
    retention_at(node_db, data_dir, NOW).run()
    late = generate_uid()
    entry = Spool(data_dir / "spool").write(study.uid, late, [b"late"])
    with node_db.sessions.begin() as session:
        outcome = worklist.record_instance(session, worklist.InstanceRecord(
            late, generate_uid(), study.uid, DX, "1.2.840.10008.1.2.1", "DX", "CHEST", "PA",
            entry.relative_path, 4, "MOD"), NOW + timedelta(hours=1))
        assert outcome.reopened_from is StudyState.DONE
        worklist.queue_stable_studies(session, 0, NOW + timedelta(hours=2))
        claimed = worklist.claim_next(session, "w", 600, NOW + timedelta(hours=2))
    assert [i.sop_instance_uid for i in claimed.instances] == [late]  # no missing files


def test_reprocess_of_a_purged_study_is_refused_in_words(node_db, data_dir) -> None:
    from dicom_node.audit import Actor
    from dicom_node.studies import requeue_studies

    study = seed(node_db, data_dir, "sent", NOW - timedelta(days=10))
    retention_at(node_db, data_dir, NOW).run()
    (outcome,) = requeue_studies(node_db, [study.uid], NOW, reprocess=True,
                                 actor=Actor("test", "cli"))
    assert outcome.previous_state is None and "purged" in outcome.error
    assert study_of(node_db, study.uid).state == "DONE"


def test_dry_run_changes_nothing(node_db, data_dir) -> None:
    study = seed(node_db, data_dir, "sent", NOW - timedelta(days=10), images=2)
    before = study_of(node_db, study.uid)

    report = retention_at(node_db, data_dir, NOW).run(dry_run=True)

    assert [(i.study_instance_uid, i.files, i.size_bytes) for i in report.items] == [
        (study.uid, 4, 2 * 4096 + 2 * 700)]
    assert all(p.is_file() for p in study.files())
    assert study_of(node_db, study.uid) == before


# --- the CLI, as an admin runs it -------------------------------------------------------------


def test_purge_command_dry_run_then_purge_and_studies_show(node_db, data_dir, tmp_path) -> None:
    now = datetime.now(UTC)
    old = seed(node_db, data_dir, "sent", now - timedelta(days=8))
    pending = seed(node_db, data_dir, "pending", now - timedelta(days=30))
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{data_dir}"\n')

    dry = run_cli("purge", "--dry-run", "--config", str(config))
    assert dry.returncode == 0, dry.stderr
    shown_text = "".join(line.split("│")[1].strip() for line in dry.stdout.splitlines()
                         if line.count("│") > 2)
    assert old.uid in shown_text and pending.uid not in shown_text  # whole UIDs, folded
    assert "1 studies' files (3 files, 5.4 KiB) and 0 studies' rows would go" in dry.stdout
    assert max(len(line) for line in dry.stdout.splitlines()) <= 80
    assert all(p.is_file() for p in old.files())

    done = run_cli("purge", "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["studies_purged"] == 1 and outcome["bytes"] == 4096 + 2 * 700
    assert not any(p.exists() for p in old.files())
    assert all(p.is_file() for p in pending.files())

    shown = run_cli("studies", "show", old.uid, "--config", str(config))
    assert "purged_at" in shown.stdout and "retention" in shown.stdout
    detail = json.loads(run_cli("studies", "show", old.uid, "--json", "--config",
                                str(config)).stdout)
    assert detail["purged_files"] == 3 and detail["purged_at"] is not None


# --- disk pressure in the real node -----------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path):
    """A 24 MiB tmpfs for a node's data_dir; skipped where mounting is not permitted."""
    path = tmp_path / "tmpfs"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): no small file system available")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_disk_pressure_purges_oldest_delivered_before_refusing(
    node_factory, tmpfs, tmp_path
) -> None:
    node = node_factory("pressure", node={"data_dir": str(tmpfs / "data"), "min_free_disk_mb": 8},
                        retention={"pressure_margin_mb": 2, "interval_minutes": 0})
    db = open_database(f"sqlite:///{tmpfs / 'data' / 'worklist.sqlite'}")
    try:
        now = datetime.now(UTC)
        oldest = seed(db, tmpfs / "data", "sent", now - timedelta(hours=3), images=3,
                      size=2 * 2**20)
        newer = seed(db, tmpfs / "data", "sent", now - timedelta(hours=1), images=3,
                     size=2 * 2**20)
        pending = seed(db, tmpfs / "data", "pending", now - timedelta(days=20), images=3,
                       size=2 * 2**20)
        free_mb = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize / 2**20
        assert free_mb < 10, free_mb  # below floor + margin: a store needs a purge first
        node.start()
        image = write(make_radiograph(rows=256, columns=256), tmp_path / "new.dcm")
        result = storescu(node.port, [image])
        assert store_responses(result.stdout + result.stderr) == ["Success"], result.stderr

        (line,) = node.events("disk_pressure_purge")
        assert line["studies_purged"] == 1 and line["bytes_freed"] >= 6 * 2**20
        assert not any(p.exists() for p in oldest.files())
        assert all(p.is_file() for p in newer.files() + pending.files())
        assert study_of(db, oldest.uid).purge_reason == "disk-pressure"
    finally:
        db.dispose()


def test_disk_pressure_with_nothing_delivered_refuses_and_keeps_the_work(
    node_factory, tmpfs, tmp_path
) -> None:
    node = node_factory("full", node={"data_dir": str(tmpfs / "data"), "min_free_disk_mb": 20},
                        retention={"pressure_margin_mb": 2, "interval_minutes": 0})
    db = open_database(f"sqlite:///{tmpfs / 'data' / 'worklist.sqlite'}")
    try:
        pending = seed(db, tmpfs / "data", "pending", datetime.now(UTC) - timedelta(days=20),
                       images=3, size=2 * 2**20)
        node.start()
        image = write(make_radiograph(rows=256, columns=256), tmp_path / "new.dcm")
        result = storescu(node.port, [image])
        assert store_responses(result.stdout + result.stderr) == ["Refused: OutOfResources"]
        (line,) = node.events("disk_pressure_purge")
        assert line["studies_purged"] == 0
        assert all(p.is_file() for p in pending.files())
    finally:
        db.dispose()


def test_scheduled_purge_in_the_node_and_a_resent_purged_image_is_not_kept_again(
    node_factory, tmp_path
) -> None:
    node = node_factory("scheduled", retention={"interval_minutes": 0.02})  # every 1.2 s
    image = write(make_radiograph(rows=256, columns=256), tmp_path / "old.dcm")
    db = open_database(f"sqlite:///{node.data_dir / 'worklist.sqlite'}")
    try:
        old = seed(db, node.data_dir, "sent", datetime.now(UTC) - timedelta(days=8),
                   dataset=_ImageFile(image))
        young = seed(db, node.data_dir, "sent", datetime.now(UTC) - timedelta(days=1))
        node.start()
        node.wait_for(lambda: node.events("retention_purge"), "the scheduled purge", timeout=30)
        assert not any(p.exists() for p in old.files())
        assert all(p.is_file() for p in young.files())

        result = storescu(node.port, [image])  # the modality sends it again
        assert store_responses(result.stdout + result.stderr) == ["Success"]
        assert node.events("duplicate_instance")[-1]["sop_instance_uid"] == old.spool_files[0].stem
        assert not old.spool_files[0].exists()
        assert study_of(db, old.uid).state == "DONE"  # not reopened: nothing new arrived
    finally:
        db.dispose()


class _ImageFile:
    """A written radiograph's UIDs and bytes, for `seed(dataset=...)`."""

    def __init__(self, path: Path) -> None:
        from pydicom import dcmread

        ds = dcmread(path, stop_before_pixels=True)
        self.StudyInstanceUID, self.SOPInstanceUID = ds.StudyInstanceUID, ds.SOPInstanceUID
        self.read_bytes = path.read_bytes
