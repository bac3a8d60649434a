"""A node that says whether it is healthy: heartbeat rows of running processes, `status`
and `status --check` against the real node process."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml.testing import write_random_checkpoint
from storage import heartbeat
from storage.db import open_database
from tests.peers import NodeProcess


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", seed=5)


def _worker_node(node_factory, name: str, checkpoint: Path | str, **sections) -> NodeProcess:
    return node_factory(
        name,
        model={"checkpoints": [str(checkpoint)], "name": "tiny-test", "cpu_threads": 1},
        worker={"enabled": True, "poll_interval_seconds": 1},
        node={"heartbeat_seconds": 0.5},
        **sections,
    )


def _heartbeats(node: NodeProcess) -> list[heartbeat.HeartbeatView]:
    database = open_database(f"sqlite:///{node.data_dir / 'worklist.sqlite'}", migrate=False)
    try:
        with database.read_only() as session:
            return heartbeat.list_heartbeats(session)
    finally:
        database.dispose()


def test_serve_beats_with_its_model_state_and_removes_its_row_on_a_clean_stop(
    node_factory, checkpoint
) -> None:
    node = _worker_node(node_factory, "beating", checkpoint).start()
    rows = node.wait_for(
        lambda: [r for r in _heartbeats(node) if r.model_state == "loaded"],
        "a heartbeat with the model loaded", timeout=60,
    )
    assert [(r.role, r.pid) for r in rows] == [("serve", node.process.pid)]
    first = rows[0].beat_at
    node.wait_for(lambda: _heartbeats(node)[0].beat_at > first, "the next beat", timeout=5)
    assert node.stop() == 0
    assert _heartbeats(node) == []


@pytest.mark.parametrize("broken, state", [("missing", "missing"), ("garbage", "corrupt")])
def test_a_model_that_cannot_load_is_reported_missing_or_corrupt(
    node_factory, tmp_path, broken, state
) -> None:
    path = tmp_path / f"{broken}.pt"
    if broken == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 100)
    node = _worker_node(node_factory, broken, path).start()
    rows = node.wait_for(
        lambda: [r for r in _heartbeats(node) if r.model_state == state],
        f"a heartbeat with the model {state}", timeout=60,
    )
    assert path.name in (rows[0].model_error or "")
