"""Concurrent workers never claim the same study twice (SQLite: BEGIN IMMEDIATE + guarded UPDATE;
PostgreSQL: FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from storage import worklist
from storage.db import Database
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS

T0 = datetime(2024, 5, 1, tzinfo=UTC)


def test_parallel_claims_are_exclusive(database: Database) -> None:
    studies = [f"1.2.826.0.1.3680043.8.498.{n}" for n in range(1, 41)]
    with database.sessions.begin() as session:
        for n, uid in enumerate(studies):
            record = worklist.InstanceRecord(
                sop_instance_uid=f"{uid}.1",
                series_instance_uid=f"{uid}.2",
                study_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                modality="CR",
                body_part_examined="CHEST",
                view_position="PA",
                spool_path=f"{uid}/{n}.dcm",
                size_bytes=1,
                calling_ae_title=None,
            )
            worklist.record_instance(session, record, T0)
        worklist.queue_stable_studies(session, 0, T0 + timedelta(seconds=1))

    def drain(worker: str) -> list[str]:
        claimed = []
        while True:
            with database.sessions.begin() as session:
                study = worklist.claim_next(session, worker, 60, T0 + timedelta(seconds=2))
            if study is None:
                return claimed
            claimed.append(study.study_instance_uid)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(drain, ["w1", "w2", "w3", "w4"]))
    everything = [uid for claimed in results for uid in claimed]
    assert sorted(everything) == sorted(studies)  # each exactly once
