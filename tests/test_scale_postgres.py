"""The scale-out proof on real parts: one PostgreSQL, two `serve` listeners on different ports
sharing one spool root, three `worker` processes (one of them with --concurrency 2) and a real
Orthanc as the PACS. 200 one-image studies arrive over 4 associations split across both
listeners; PostgreSQL is restarted in the middle of intake and one worker is killed with
SIGKILL in the middle of a study.

What must hold: every instance a listener acknowledged is in the work list; every study is
processed exactly once (one result version each); every SR, summary image and text report
reaches Orthanc and is recorded as sent by exactly one sender; the killed worker's study is finished by another
worker within 2 heartbeat intervals. (With the demo model; about 2-4 minutes on 2 cores.)
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from storage import heartbeat as heartbeats
from storage.db import Database, open_database
from storage.models import Instance, Outbound, OutboundState, Result, Study
from storage.states import StudyState
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import (
    NodeProcess,
    OrthancPeer,
    PostgresServer,
    WorkerProcess,
    store_responses,
    storescu,
)

pytestmark = pytest.mark.slow

STUDIES = 200
OBJECTS = 3  # per study: the findings SR, the summary image and the text report
ASSOCIATIONS = 4
HEARTBEAT_S = 5.0  # the shipped default


@pytest.fixture
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancPeer]:
    peer = OrthancPeer(tmp_path / "orthanc")
    try:
        yield peer.start()
    finally:
        peer.stop()


def _config(workdir: Path, url: str, shared: Path, orthanc: OrthancPeer) -> NodeProcess:
    node = NodeProcess.create(
        workdir,
        node={"shared_dir": str(shared), "heartbeat_seconds": HEARTBEAT_S},
        database={"url": url},
        worklist={"stable_seconds": 1, "assembly_interval_seconds": 0.5},
        # no attention maps: they are an extra costing ~0.5 s of CPU a study, not what is proven
        worker={"enabled": False, "poll_interval_seconds": 2, "heat_maps_per_study": 0},
        outbound={"poll_interval_seconds": 2},
    )
    with node.config_path.open("a") as f:
        f.write(f'\n[[destinations]]\nname = "pacs"\nae_title = "{orthanc.ae_title}"\n'
                f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
    return node


def _count(database: Database, statement) -> int | None:
    try:
        with database.read_only() as session:
            return int(session.scalar(statement) or 0)
    except SQLAlchemyError:  # PostgreSQL is being restarted
        return None


def _ready(database: Database) -> tuple[int, int]:
    """(serve processes beating, worker processes beating with their model loaded)."""
    with database.read_only() as session:
        beats = heartbeats.list_heartbeats(session)
    return (sum(b.role == "serve" for b in beats),
            sum(b.role == "worker" and b.model_state == "loaded" for b in beats))


def _wait(what: str, predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _all_done_none_failed(database: Database) -> bool:
    """True once every study is DONE; a FAILED study ends the wait at once, naming its error."""
    try:
        with database.read_only() as session:
            counts = Counter(session.scalars(select(Study.state)))
            failed = session.scalars(select(Study.last_error).where(
                Study.state == StudyState.FAILED)).all()
    except SQLAlchemyError:  # PostgreSQL is being restarted
        return False
    assert not failed, f"{len(failed)} studies FAILED: {sorted(set(failed))}"
    return counts[StudyState.DONE] == STUDIES


def _send(port: int, files: list[Path], acknowledged: dict[Path, str]) -> None:
    run = storescu(port, files, timeout=600)
    for path, answer in zip(files, store_responses(run.stdout + run.stderr), strict=False):
        acknowledged[path] = answer


def test_two_listeners_three_workers_one_postgres_exactly_once(
    tmp_path: Path, postgres: PostgresServer, orthanc: OrthancPeer
) -> None:
    url = postgres.url(postgres.create_database())
    shared = tmp_path / "nfs"  # stands for the network file system every host mounts
    listeners = [_config(tmp_path / f"intake-{n}", url, shared, orthanc) for n in (1, 2)]
    workers = [WorkerProcess(_config(tmp_path / f"gpu-{n}", url, shared, orthanc).config_path,
                             tmp_path / f"gpu-{n}" / "worker.log", args)
               for n, args in ((1, ("--concurrency", "2")), (2, ()), (3, ()))]
    database = open_database(url)  # migrated here once; the processes find it current
    files = [write(make_radiograph(study=StudyUids(), seed=n), tmp_path / "in" / f"{n}.dcm")
             for n in range(STUDIES)]
    try:
        for process in (*listeners, *workers):
            process.start()
        _wait("every process beating, the workers' model loaded",
              lambda: _ready(database) == (2, 3), 300)
        acknowledged: dict[Path, str] = {}
        senders = [threading.Thread(target=_send, args=(
            listeners[n % 2].port, files[n::ASSOCIATIONS], acknowledged))
            for n in range(ASSOCIATIONS)]
        for thread in senders:
            thread.start()

        # PostgreSQL restarted in the middle of intake
        _wait("a quarter of the instances", lambda: (_count(
            database, select(func.count()).select_from(Instance)) or 0) >= STUDIES // 4, 300)
        postgres.stop()
        time.sleep(2 * HEARTBEAT_S)
        postgres.start()

        # one worker killed in the middle of a study
        victim = workers[2]
        held: list[str] = []

        def victim_holds_a_study() -> bool:
            try:
                with database.read_only() as session:
                    held[:] = session.scalars(select(Study.study_instance_uid).where(
                        Study.state == StudyState.PROCESSING,
                        Study.worker_id.like(f"%:{victim.pid}:%"))).all()
            except SQLAlchemyError:
                return False
            return bool(held)

        _wait("the victim worker to hold a study", victim_holds_a_study, 300)
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = datetime.now(UTC)
        victim.stop()

        for thread in senders:
            thread.join()
        refused = [path for path in files if acknowledged.get(path) != "Success"]
        assert 0 < len(refused) < STUDIES, "the restart refused some instances, not all"
        assert {acknowledged[p] for p in refused if p in acknowledged} <= {
            "Refused: OutOfResources"}
        _send(listeners[0].port, refused, acknowledged)  # the modality sends them again
        assert all(answer == "Success" for answer in acknowledged.values())

        _wait("every study DONE", lambda: _all_done_none_failed(database), 400)
        _wait("every object SENT", lambda: _count(database, select(func.count()).select_from(
            Outbound).where(Outbound.state == OutboundState.SENT)) == OBJECTS * STUDIES, 300)

        with database.read_only() as session:
            instances = session.scalar(select(func.count()).select_from(Instance))
            versions = Counter(session.scalars(select(Result.study_id)))
            taken_over = session.execute(select(Study.state_changed_at, Study.attempts).where(
                Study.study_instance_uid.in_(held))).all()
            sent = session.execute(select(Outbound.sop_instance_uid, Outbound.attempts)).all()
        assert instances == STUDIES  # nothing acknowledged was lost, nothing stored twice
        assert len(versions) == STUDIES and set(versions.values()) == {1}
        assert len({sop for sop, _ in sent}) == OBJECTS * STUDIES
        for changed_at, attempts in taken_over:
            assert attempts == 1  # the killed worker's attempt
            assert (changed_at - killed_at).total_seconds() <= 2 * HEARTBEAT_S

        deliveries = Counter(
            event["sop_instance_uid"] for process in (*listeners, *workers)
            for event in process.events("delivery_sent"))
        assert set(deliveries) == {sop for sop, _ in sent} and set(deliveries.values()) == {1}
        assert not [e for process in (*listeners, *workers)
                    for e in process.events("delivery_sent_again")]
        assert orthanc.instance_count() == OBJECTS * STUDIES
    finally:
        for process in (*workers, *listeners):
            process.stop()
        database.dispose()
