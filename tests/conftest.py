"""Shared fixtures: a migrated database, free ports, a running node, a dcmtk storescp.

The peers themselves (processes, ports, DICOM helpers) live in tests/peers.py so that benches
and other test modules can use them without pytest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.db import Database, open_database


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    """A fresh SQLite work list (WAL, migrated to head) in a temporary directory."""
    db = open_database(f"sqlite:///{tmp_path / 'worklist.sqlite'}")
    yield db
    db.dispose()
