"""The work list on a real PostgreSQL shared by several processes: migrations under an advisory
lock, a process older than the database refusing to start, the database going away and back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import (
    NodeProcess,
    PostgresServer,
    echoscu,
    free_port,
    run_cli,
    store_responses,
    storescu,
    toml_text,
)


def _config(tmp_path: Path, url: str, name: str = "node") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(toml_text({
        "node": {"data_dir": str(tmp_path / name), "host": "127.0.0.1", "port": free_port()},
        "database": {"url": url},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "worker": {"enabled": False},
    }))
    return path


def test_processes_starting_together_migrate_once(tmp_path: Path, empty_postgres: str) -> None:
    configs = [_config(tmp_path, empty_postgres, f"host{n}") for n in range(4)]
    with ThreadPoolExecutor(len(configs)) as pool:
        runs = list(pool.map(
            lambda c: run_cli("db", "upgrade", "--json", "--config", str(c)), configs))
    assert [r.returncode for r in runs] == [0] * 4, [r.stderr for r in runs]
    reports = [json.loads(r.stdout) for r in runs]
    assert sorted(len(r["applied"]) > 0 for r in reports) == [False, False, False, True]
    migrated = next(r for r in reports if r["applied"])
    assert {r["revision"] for r in reports} == {migrated["applied"][-1]}


def test_a_process_older_than_the_database_refuses_in_one_line(
    tmp_path: Path, empty_postgres: str
) -> None:
    config = _config(tmp_path, empty_postgres)
    assert run_cli("db", "upgrade", "--config", str(config)).returncode == 0
    engine = create_engine(empty_postgres)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    engine.dispose()
    # a process that would write refuses; read-only commands (studies list) may still look
    for command in (("db", "upgrade"), ("serve",), ("worker", "--once")):
        run = run_cli(*command, "--config", str(config), timeout=120)
        assert run.returncode == 2, (command, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "0099_from_the_future" in lines[0], (command, run.stderr)
        assert "newer than this dicom-node" in lines[0]


def _responses(node: NodeProcess, files: list[Path]) -> list[str]:
    sent = storescu(node.port, files, called_ae=node.ae_title)
    return store_responses(sent.stdout + sent.stderr)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test alone (it is stopped and started again)."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.close()


def test_database_down_refuses_transiently_then_continues_without_restart(
    tmp_path: Path, own_postgres: PostgresServer
) -> None:
    url = own_postgres.url(own_postgres.create_database())
    node = NodeProcess.create(
        tmp_path / "node", database={"url": url},
        worker={"enabled": True, "poll_interval_seconds": 0.5},
    ).start()
    try:
        first, second = StudyUids(), StudyUids()
        a = write(make_radiograph(study=first), tmp_path / "a.dcm")
        b = write(make_radiograph(study=second, seed=1), tmp_path / "b.dcm")
        assert _responses(node, [a]) == ["Success"]
        node.wait_for_state(first.study, "DONE", timeout=120)

        own_postgres.stop()
        assert _responses(node, [b]) == ["Refused: OutOfResources"]
        assert echoscu(node.port).returncode == 0  # the listener itself stays up
        node.wait_for(lambda: node.events("worker_paused"), "the worker to pause", timeout=30)
        assert not (node.data_dir / "spool" / second.study).exists() or not any(
            (node.data_dir / "spool" / second.study).iterdir())  # nothing kept half-accepted

        own_postgres.start()
        assert _responses(node, [b]) == ["Success"]
        node.wait_for_state(second.study, "DONE", timeout=120)
        assert node.events("worker_resumed")
        assert node.study(first.study).state == "DONE"  # nothing acknowledged was lost
        assert node.process is not None and node.process.poll() is None  # never restarted
    finally:
        node.stop()


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_a_study_queued_by_any_process_wakes_listeners_at_commit_only(database) -> None:
    """LISTEN/NOTIFY: the wake-up arrives when the queuing transaction commits (not on a
    rollback), and the listener comes back by itself after its connection is cut."""
    from dicom_node.wakeups import Wakeups
    from storage.wakeups import QUEUED

    woken = threading.Event()
    wakeups = Wakeups(database)
    wakeups.on(QUEUED, woken.set)
    wakeups.start()
    try:
        assert woken.wait(10)  # woken once on (re)connecting, for what it may have missed
        woken.clear()
        _record(database, "1.2.3.9", commit=False)
        assert not woken.wait(1.5)
        _record(database, "1.2.3.9", commit=True)
        assert woken.wait(5)

        woken.clear()
        with database.engine.begin() as connection:  # the server drops the listener
            connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"))
        assert woken.wait(15)  # reconnected: wakes everyone once
        woken.clear()
        _record(database, "1.2.3.10", commit=True)
        assert woken.wait(5)
    finally:
        wakeups.stop()


def _record(database, study: str, commit: bool) -> None:
    from datetime import UTC, datetime

    from storage import worklist

    record = worklist.InstanceRecord(
        sop_instance_uid=f"{study}.1", series_instance_uid=f"{study}.2", study_instance_uid=study,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="DX", body_part_examined="CHEST", view_position="PA",
        spool_path=f"{study}/{study}.1.dcm", size_bytes=1, calling_ae_title=None)
    now = datetime.now(UTC)
    with database.sessions() as session:
        worklist.record_instance(session, record, now)
        assert worklist.queue_stable_studies(session, 0, now) == [study]
        if commit:
            session.commit()
        else:
            session.rollback()
