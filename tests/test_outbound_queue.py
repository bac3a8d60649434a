"""The outbound queue in the database: one row per object and destination, leases, retries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storage import outbound, results
from storage.models import OutboundState
from storage.worklist import InstanceRecord, record_instance
from tests.conftest import BOTH_BACKENDS

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
STUDY = "1.2.3.4"


pytestmark = BOTH_BACKENDS


@pytest.fixture
def db(database):
    return database


def _result(db, key="k1", version=1, supersedes=None):
    with db.sessions.begin() as session:
        outcome = record_instance(
            session,
            InstanceRecord(
                sop_instance_uid=f"1.2.3.4.{version}", series_instance_uid="1.2.3.4.0",
                study_instance_uid=STUDY, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1", modality="DX",
                body_part_examined="CHEST", view_position="PA",
                spool_path=f"{STUDY}/x{version}.dcm", size_bytes=10, calling_ae_title="MOD",
            ),
            T0,
        )
        return results.add_result(
            session,
            results.NewResult(
                study_id=outcome.study_id, study_instance_uid=STUDY, result_key=key,
                version=version, supersedes_id=supersedes, worker_id="w1", model_name="m",
                checkpoint_sha256s=("ab" * 32,), catalogue_version="c1", clinical_use=False,
                profile_version=2, aggregation="mean",
                sr_series_instance_uid="2.25.1", sr_sop_instance_uid=f"2.25.1{version}",
                summary_series_instance_uid="2.25.2", summary_sop_instance_uid=f"2.25.2{version}",
                findings=(results.FindingRecord("Edema", 0.7, 0.5, True),),
                images=(
                    results.ImageRecord("1.2.3.4.1", True, None, {"Edema": 0.7}),
                    results.ImageRecord("1.2.3.4.9", False, "lateral view", None),
                ),
            ),
            T0,
        )


def _deliveries(sop="2.25.11"):
    return [
        outbound.NewDelivery(name, "sr", STUDY, sop, "1.2.840.10008.5.1.4.1.1.88.33", "a/b.dcm")
        for name in ("pacs", "archive")
    ]


def test_result_keeps_model_thresholds_findings_and_image_scores(db):
    result_id = _result(db)
    with db.read_only() as session:
        view = results.latest_result(session, results.find_result(session, "k1").study_id)
    assert view.id == result_id
    assert (view.model_name, view.profile_version, view.aggregation) == ("m", 2, "mean")
    assert view.findings == (results.FindingRecord("Edema", 0.7, 0.5, True),)
    assert view.images[0].scores == {"Edema": 0.7}
    assert view.images[1].reason == "lateral view"


def test_each_object_is_queued_once_per_destination(db):
    result_id = _result(db)
    with db.sessions.begin() as session:
        assert outbound.enqueue(session, result_id, _deliveries(), T0) == 2
        assert outbound.enqueue(session, result_id, _deliveries(), T0) == 0
    with db.read_only() as session:
        assert outbound.state_counts(session)[OutboundState.PENDING] == 2


def test_a_claimed_row_is_not_claimed_again_until_its_lease_passes(db):
    result_id = _result(db)
    with db.sessions.begin() as session:
        outbound.enqueue(session, result_id, _deliveries(), T0)
    with db.sessions.begin() as session:
        first = outbound.claim_due(session, "pacs", T0, lease_seconds=60)
    with db.sessions.begin() as session:
        again = outbound.claim_due(session, "pacs", T0 + timedelta(seconds=30), lease_seconds=60)
        later = outbound.claim_due(session, "pacs", T0 + timedelta(seconds=61), lease_seconds=60)
    assert len(first) == 1
    assert again == []
    assert [d.id for d in later] == [first[0].id]


def test_sent_is_final_and_retry_refuses_it(db):
    result_id = _result(db)
    with db.sessions.begin() as session:
        outbound.enqueue(session, result_id, _deliveries(), T0)
        (delivery,) = outbound.claim_due(session, "pacs", T0, lease_seconds=60)
        outbound.mark_sent(session, delivery.id, T0)
    with db.sessions.begin() as session:
        assert outbound.claim_due(session, "pacs", T0 + timedelta(days=1), 60) == []
        with pytest.raises(outbound.OutboundError, match="not sent twice"):
            outbound.retry(session, T0, ids=[delivery.id])
        with pytest.raises(outbound.OutboundError, match="no outbound delivery"):
            outbound.retry(session, T0, ids=[999])


def test_failures_reschedule_then_dead_and_retry_revives(db):
    result_id = _result(db)
    with db.sessions.begin() as session:
        outbound.enqueue(session, result_id, _deliveries(), T0)
        (delivery,) = outbound.claim_due(session, "archive", T0, 60)
        retry_at = T0 + timedelta(seconds=10)
        assert outbound.mark_failed(session, delivery.id, "refused", retry_at, T0) == "PENDING"
        assert outbound.next_due_at(session, "archive") == retry_at
        (delivery,) = outbound.claim_due(session, "archive", retry_at, 60)
        assert outbound.mark_failed(session, delivery.id, "still refused", None, T0) == "DEAD"
    with db.sessions.begin() as session:
        (dead,) = outbound.list_deliveries(session, OutboundState.DEAD)
        assert (dead.attempts, dead.last_error) == (2, "still refused")
        assert outbound.retry(session, T0, all_dead=True) == [dead.id]
        (revived,) = outbound.claim_due(session, "archive", T0, 60)
        assert revived.attempts == 0


def test_superseding_result_gets_the_next_version(db):
    first = _result(db, key="k1", version=1)
    second = _result(db, key="k2", version=2, supersedes=first)
    with db.read_only() as session:
        views = results.results_for_study(session, STUDY)
    assert [(v.version, v.supersedes_id) for v in views] == [(1, None), (2, first)]
    assert views[-1].id == second
