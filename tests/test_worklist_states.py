"""The work-list state machine with an injected clock: assembly, leases, outcomes, reopening."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage import worklist
from storage.db import Database
from storage.states import InvalidTransition, LeaseLost, StudyState
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STUDY = "1.2.826.0.1.3680043.8.498.1"


def record(db: Database, sop: str, now: datetime, study: str = STUDY) -> worklist.RecordOutcome:
    rec = worklist.InstanceRecord(
        sop_instance_uid=sop,
        series_instance_uid=study + ".1",
        study_instance_uid=study,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="DX",
        body_part_examined="CHEST",
        view_position="PA",
        spool_path=f"{study}/{sop}.dcm",
        size_bytes=1000,
        calling_ae_title="MODALITY",
    )
    with db.sessions.begin() as session:
        return worklist.record_instance(session, rec, now)


def state_of(db: Database, study: str = STUDY) -> worklist.StudySummary:
    with db.read_only() as session:
        detail = worklist.study_detail(session, study)
    assert detail is not None
    return detail[0]


def assemble(db: Database, now: datetime, stable: float = 10) -> list[str]:
    with db.sessions.begin() as session:
        return worklist.queue_stable_studies(session, stable, now)


def claim(db: Database, now: datetime, worker: str = "w1", lease: float = 60):
    with db.sessions.begin() as session:
        return worklist.claim_next(session, worker, lease, now)


def sweep(db: Database, now: datetime, max_attempts: int = 3):
    with db.sessions.begin() as session:
        return worklist.requeue_expired(session, now, max_attempts)


def test_study_is_queued_only_after_the_quiet_period(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    record(database, STUDY + ".1.2", T0 + timedelta(seconds=5))
    assert assemble(database, T0 + timedelta(seconds=14)) == []
    assert state_of(database).state is StudyState.RECEIVING
    assert assemble(database, T0 + timedelta(seconds=15)) == [STUDY]
    summary = state_of(database)
    assert (summary.state, summary.instance_count, summary.bytes_total) == (
        StudyState.QUEUED,
        2,
        2000,
    )


def test_duplicate_instance_changes_nothing(database: Database) -> None:
    first = record(database, STUDY + ".1.1", T0)
    again = record(database, STUDY + ".1.1", T0 + timedelta(seconds=3))
    assert (first.duplicate, again.duplicate) == (False, True)
    summary = state_of(database)
    assert summary.instance_count == 1
    assert summary.last_arrival_at == T0


def test_claim_gives_the_instances_and_a_lease(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    claimed = claim(database, T0 + timedelta(seconds=11), lease=30)
    assert claimed is not None
    assert claimed.study_instance_uid == STUDY
    assert [i.sop_instance_uid for i in claimed.instances] == [STUDY + ".1.1"]
    assert claimed.lease_until == T0 + timedelta(seconds=41)
    assert claim(database, T0 + timedelta(seconds=12), worker="w2") is None
    summary = state_of(database)
    assert (summary.state, summary.worker_id) == (StudyState.PROCESSING, "w1")


def test_complete_skip_and_fail_need_the_lease(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    claimed = claim(database, T0 + timedelta(seconds=11))
    with pytest.raises(LeaseLost), database.sessions.begin() as session:
        worklist.complete(session, claimed.study_id, "someone-else", T0 + timedelta(seconds=12))
    with database.sessions.begin() as session:
        assert worklist.complete(session, claimed.study_id, "w1", T0 + timedelta(seconds=12)) == (
            StudyState.DONE
        )
    with pytest.raises(InvalidTransition), database.sessions.begin() as session:
        worklist.skip(session, claimed.study_id, "w1", "twice", T0 + timedelta(seconds=13))
    assert state_of(database).state is StudyState.DONE


def test_skip_keeps_the_reason(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    claimed = claim(database, T0 + timedelta(seconds=11))
    with database.sessions.begin() as session:
        worklist.skip(session, claimed.study_id, "w1", "no frontal image", T0)
    summary = state_of(database)
    assert (summary.state, summary.skip_reason) == (StudyState.SKIPPED, "no frontal image")


def test_expired_lease_returns_to_queue_then_fails_after_max_attempts(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    now = T0 + timedelta(seconds=10)
    for attempt in (1, 2):
        claimed = claim(database, now, worker=f"w{attempt}", lease=60)
        assert claimed is not None and claimed.attempts == attempt - 1
        assert sweep(database, now + timedelta(seconds=59)) == []  # lease still valid
        now += timedelta(seconds=61)
        (outcome,) = sweep(database, now)
        assert (outcome.state, outcome.attempts) == (StudyState.QUEUED, attempt)
    claim(database, now, worker="w3", lease=60)
    (outcome,) = sweep(database, now + timedelta(seconds=61))
    assert outcome.state is StudyState.FAILED
    summary = state_of(database)
    assert (summary.state, summary.attempts) == (StudyState.FAILED, 3)
    assert "w3" in (summary.last_error or "")


def test_renewed_lease_is_not_swept(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    claimed = claim(database, T0 + timedelta(seconds=10), lease=60)
    with database.sessions.begin() as session:
        worklist.renew_lease(session, claimed.study_id, "w1", 60, T0 + timedelta(seconds=60))
    assert sweep(database, T0 + timedelta(seconds=100)) == []
    assert state_of(database).state is StudyState.PROCESSING


def test_worker_failure_retries_then_fails_with_the_error(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    for attempt, expected in ((1, StudyState.QUEUED), (2, StudyState.FAILED)):
        claimed = claim(database, T0 + timedelta(seconds=10 + attempt))
        with database.sessions.begin() as session:
            state = worklist.fail(
                session, claimed.study_id, "w1", f"boom {attempt}", T0, max_attempts=2
            )
        assert state is expected
    summary = state_of(database)
    assert (summary.state, summary.last_error) == (StudyState.FAILED, "boom 2")


def test_permanent_failure_does_not_retry(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    claimed = claim(database, T0 + timedelta(seconds=10))
    with database.sessions.begin() as session:
        state = worklist.fail(session, claimed.study_id, "w1", "bad", T0, 5, permanent=True)
    assert state is StudyState.FAILED


@pytest.mark.parametrize("finish", ["complete", "skip", "fail"])
def test_late_instance_reopens_a_finished_study(database: Database, finish: str) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    claimed = claim(database, T0 + timedelta(seconds=10))
    with database.sessions.begin() as session:
        if finish == "complete":
            worklist.complete(session, claimed.study_id, "w1", T0 + timedelta(seconds=20))
        elif finish == "skip":
            worklist.skip(session, claimed.study_id, "w1", "why", T0 + timedelta(seconds=20))
        else:
            worklist.fail(session, claimed.study_id, "w1", "x", T0, 1)
    outcome = record(database, STUDY + ".1.2", T0 + timedelta(seconds=30))
    assert outcome.reopened_from in (StudyState.DONE, StudyState.SKIPPED, StudyState.FAILED)
    summary = state_of(database)
    assert (summary.state, summary.instance_count, summary.reopened_count, summary.attempts) == (
        StudyState.RECEIVING,
        2,
        1,
        0,
    )
    assert assemble(database, T0 + timedelta(seconds=40)) == [STUDY]
    again = claim(database, T0 + timedelta(seconds=41))
    assert len(again.instances) == 2


def test_instance_arriving_during_processing_reopens_on_completion(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    claimed = claim(database, T0 + timedelta(seconds=10))
    record(database, STUDY + ".1.2", T0 + timedelta(seconds=12))
    assert state_of(database).state is StudyState.PROCESSING  # the worker keeps its lease
    with database.sessions.begin() as session:
        state = worklist.complete(session, claimed.study_id, "w1", T0 + timedelta(seconds=13))
    assert state is StudyState.RECEIVING
    assert assemble(database, T0 + timedelta(seconds=22)) == [STUDY]


def test_late_instance_for_a_queued_study_restarts_the_quiet_period(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    assemble(database, T0 + timedelta(seconds=10))
    record(database, STUDY + ".1.2", T0 + timedelta(seconds=11))
    assert state_of(database).state is StudyState.RECEIVING
    assert assemble(database, T0 + timedelta(seconds=20)) == []
    assert assemble(database, T0 + timedelta(seconds=21)) == [STUDY]


def test_claims_are_oldest_queued_first(database: Database) -> None:
    other = "1.2.826.0.1.3680043.8.498.2"
    record(database, other + ".1.1", T0, study=other)
    assemble(database, T0 + timedelta(seconds=10))
    record(database, STUDY + ".1.1", T0 + timedelta(seconds=1))
    assemble(database, T0 + timedelta(seconds=11))
    assert claim(database, T0 + timedelta(seconds=12)).study_instance_uid == other
    assert claim(database, T0 + timedelta(seconds=12)).study_instance_uid == STUDY


def test_naive_times_are_refused(database: Database) -> None:
    with pytest.raises(Exception, match="naive"):
        record(database, STUDY + ".1.1", datetime(2024, 1, 1))


def test_counts_cover_every_state(database: Database) -> None:
    record(database, STUDY + ".1.1", T0)
    with database.read_only() as session:
        counts = worklist.state_counts(session)
    assert counts[StudyState.RECEIVING] == 1
    assert set(counts) == set(StudyState)


def test_a_returned_lease_keeps_the_study_first_in_line(database: Database) -> None:
    """The study of a killed worker is the next one claimed, not queued behind the backlog."""
    first, later = STUDY + ".100", STUDY + ".200"
    record(database, first + ".1", T0, study=first)
    assert assemble(database, T0 + timedelta(seconds=10)) == [first]
    assert claim(database, T0 + timedelta(seconds=11), worker="host:1:a").study_instance_uid == (
        first)
    record(database, later + ".1", T0 + timedelta(seconds=12), study=later)
    assert assemble(database, T0 + timedelta(seconds=30)) == [later]
    with database.sessions.begin() as session:
        worklist.release_leases(session, ["host:1:a"], T0 + timedelta(seconds=31), 3)
    taken = claim(database, T0 + timedelta(seconds=32), worker="host:2:a")
    assert (taken.study_instance_uid, taken.attempts) == (first, 1)
