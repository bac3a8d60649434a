"""Shared fixtures: a migrated database, free ports, a running node, a dcmtk storescp.

The peers themselves (processes, ports, DICOM helpers) live in tests/peers.py so that benches
and other test modules can use them without pytest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.db import Database, open_database
from tests.peers import NodeProcess, PostgresServer, StoreSCP

# Modules that must hold on both back ends say `pytestmark = BOTH_BACKENDS`.
BACKENDS = ("sqlite", "postgresql")
BOTH_BACKENDS = pytest.mark.parametrize("database", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run (stopped and deleted at the end)."""
    server = PostgresServer()
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres_template(postgres_server: PostgresServer) -> str:
    """A database migrated to head once; each test gets a copy (CREATE DATABASE ... TEMPLATE)."""
    name = postgres_server.create_database()
    open_database(postgres_server.url(name)).dispose()
    return name


@pytest.fixture
def empty_postgres(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new, empty database (no schema) on the real PostgreSQL; dropped after."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A fresh work list migrated to head: SQLite (WAL) in a temporary directory, or, where a
    module is parametrised with BOTH_BACKENDS, also a fresh database on the real PostgreSQL."""
    yield from _fresh_database(request, getattr(request, "param", "sqlite"), tmp_path)


@pytest.fixture(params=BACKENDS)
def any_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """`database` on SQLite and on PostgreSQL, for fixtures that build on a work list."""
    yield from _fresh_database(request, request.param, tmp_path)


def _fresh_database(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> Iterator[Database]:
    if backend == "sqlite":
        db = open_database(f"sqlite:///{tmp_path / 'worklist.sqlite'}")
        yield db
        db.dispose()
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    name = server.create_database(template=request.getfixturevalue("postgres_template"))
    db = open_database(server.url(name))
    try:
        yield db
    finally:
        db.dispose()
        server.drop_database(name)


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Create nodes (`node_factory(name, **config_sections)`); all are stopped at teardown."""
    created: list[NodeProcess] = []

    def create(name: str = "node", **sections: dict[str, Any]) -> NodeProcess:
        node = NodeProcess.create(tmp_path / name, **sections)
        created.append(node)
        return node

    yield create
    for node in created:
        node.stop()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One running node for a whole test module (tests use their own study UIDs)."""
    node = NodeProcess.create(tmp_path_factory.mktemp("shared-node")).start()
    yield node
    node.stop()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    """A running dcmtk storescp writing into a temporary directory."""
    peer = StoreSCP(tmp_path / "storescp").start()
    yield peer
    peer.stop()
