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
from tests.peers import NodeProcess, StoreSCP


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """A fresh SQLite work list (WAL, migrated to head) in a temporary directory."""
    db = open_database(f"sqlite:///{tmp_path / 'worklist.sqlite'}")
    yield db
    db.dispose()


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
