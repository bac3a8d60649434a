"""The work list on a real PostgreSQL shared by several processes: migrations under an advisory
lock, and a process older than the database refusing to start."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.peers import free_port, run_cli, toml_text


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
