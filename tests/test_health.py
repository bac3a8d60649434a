"""A node that says whether it is healthy: heartbeat rows of running processes, `status`
and `status --check` against the real node process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicom_node.health import HealthFacts, assess
from ml.testing import write_random_checkpoint
from storage import heartbeat
from storage.db import open_database
from tests.dicom_factory import StudyUids, make_radiograph, write
from tests.peers import NodeProcess, free_port, run_cli, storescu


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


# --- the rule book of `status --check` (pure) --------------------------------------------------

LOADED_WORKER = (("loaded", None),)


@pytest.mark.parametrize(
    "facts, level, reason",
    [
        (HealthFacts(serving=True, model_states=LOADED_WORKER), "healthy", None),
        (HealthFacts(serving=True, model_states=LOADED_WORKER,
                     destinations=(("pacs", "not contacted"), ("b", "up"))), "healthy", None),
        (HealthFacts(serving=False), "down", "serve is not running"),
        (HealthFacts(serving=False, model_states=LOADED_WORKER), "down", "serve is not running"),
        (HealthFacts(serving=True, model_states=(("missing", "checkpoint not found: x.pt"),)),
         "down", "model missing: checkpoint not found: x.pt"),
        (HealthFacts(serving=True, model_states=(("corrupt", "bad"),)), "down", "model corrupt"),
        (HealthFacts(serving=True), "degraded", "no inference worker is running"),
        (HealthFacts(serving=True, model_states=(("off", None),)), "degraded",
         "no inference worker"),
        (HealthFacts(serving=True, model_states=(("loading", None),)), "degraded",
         "model still loading"),
        (HealthFacts(serving=True, model_states=LOADED_WORKER,
                     destinations=(("pacs", "down"),)), "degraded", "destination pacs is down"),
        (HealthFacts(serving=True, model_states=LOADED_WORKER,
                     destinations=(("pacs", "refusing"),)), "degraded", "pacs is refusing"),
        (HealthFacts(serving=True, model_states=LOADED_WORKER, dead=2), "degraded",
         "2 DEAD deliveries"),
        (HealthFacts(serving=True, model_states=LOADED_WORKER, oldest_pending_seconds=600,
                     pending_alert_seconds=900), "healthy", None),
        (HealthFacts(serving=True, model_states=LOADED_WORKER, oldest_pending_seconds=1200,
                     pending_alert_seconds=900), "degraded", "oldest PENDING delivery waits"),
        (HealthFacts(serving=True, model_states=LOADED_WORKER, failed_24h=1), "degraded",
         "1 studies FAILED in the last 24 h"),
        (HealthFacts(serving=True, model_states=LOADED_WORKER, below_disk_floor=True),
         "degraded", "below min_free_disk_mb"),
        (HealthFacts(serving=False, model_states=LOADED_WORKER, dead=1), "down",
         "serve is not running"),
    ],
)
def test_assess_rules(facts, level, reason) -> None:
    got, reasons = assess(facts)
    assert got == level
    if reason is None:
        assert reasons == []
    else:
        assert reason in reasons[0]


# --- `status --check` against the real node ---------------------------------------------------


def _check(node: NodeProcess):
    return run_cli("status", "--check", "--config", str(node.config_path))


def test_status_check_exit_codes_follow_the_real_node(node_factory, checkpoint, tmp_path) -> None:
    unreachable = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(),
                   "connect_timeout_seconds": 1}
    node = _worker_node(node_factory, "checked", checkpoint)
    stopped = _check(node)
    assert stopped.returncode == 2, stopped.stdout + stopped.stderr
    assert stopped.stdout.splitlines()[:2] == ["down",
                                               "serve is not running (no fresh heartbeat)"]

    node.start()
    node.wait_for(lambda: _check(node).returncode == 0, "status --check to say healthy", 60)
    healthy = node.cli_json("status")
    assert healthy["health"] == {"level": "healthy", "exit_code": 0, "reasons": []}
    assert healthy["model_state"]["state"] == "loaded"
    assert [p["role"] for p in healthy["processes"] if p["running"]] == ["serve"]
    assert node.stop() == 0
    assert _check(node).returncode == 2

    with_pacs = _worker_node(node_factory, "unreachable", checkpoint)
    with_pacs.config_path.write_text(
        with_pacs.config_path.read_text() + "[[destinations]]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in unreachable.items()))
    with_pacs.start()
    study = StudyUids()
    image = write(make_radiograph(study=study, rows=256, columns=256), tmp_path / "cr.dcm")
    assert storescu(with_pacs.port, [image], called_ae=with_pacs.ae_title).returncode == 0
    degraded = with_pacs.wait_for(
        lambda: (r := _check(with_pacs)).returncode == 1
        and "destination pacs is down" in r.stdout.splitlines() and r,
        "status --check to say degraded: destination down", 60)
    assert degraded.stdout.splitlines()[0] == "degraded"
    shown = run_cli("status", "--config", str(with_pacs.config_path), env={"COLUMNS": "80"})
    assert shown.returncode == 0
    assert "DEGRADED" in shown.stdout and "serve running" in shown.stdout
    wide = [line for line in shown.stdout.splitlines()  # the test's own long paths aside
            if len(line) > 80 and not line.startswith(("data ", "database "))]
    assert wide == []


def test_objects_for_a_destination_taken_out_of_the_config_are_listed_not_alarmed(
    node_factory, checkpoint, tmp_path
) -> None:
    """An admin removes a destination: its PENDING objects can never be sent, so an alarm that
    they wait would point at nothing the admin can fix. They are counted under the name
    instead, and go out once the destination is configured again."""
    node = _worker_node(node_factory, "removed", checkpoint,
                        outbound={"pending_alert_seconds": 0.5})
    base = node.config_path.read_text()
    gone = {"name": "old-pacs", "ae_title": "OLDPACS", "host": "127.0.0.1", "port": free_port(),
            "connect_timeout_seconds": 1}
    with_destination = base + "[[destinations]]\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in gone.items())
    node.config_path.write_text(with_destination)
    node.start()
    image = write(make_radiograph(study=StudyUids(), rows=256, columns=256), tmp_path / "cr.dcm")
    assert storescu(node.port, [image], called_ae=node.ae_title).returncode == 0
    node.wait_for(lambda: node.cli_json("status")["outbound"]["pending"] >= 3,
                  "the study's objects queued for old-pacs", 60)
    assert node.stop() == 0

    node.wait_for(  # the objects are older than pending_alert_seconds: the alarm is up
        lambda: any("oldest PENDING" in r for r in node.cli_json("status")["health"]["reasons"]),
        "the oldest-PENDING alarm while old-pacs is configured", 30)
    node.config_path.write_text(base)
    removed = node.cli_json("status")
    assert not any("oldest PENDING" in r for r in removed["health"]["reasons"])
    pending = removed["outbound"]["pending"]
    assert removed["outbound"]["pending_for_unconfigured"] == {"old-pacs": pending}
    shown = run_cli("status", "--config", str(node.config_path), env={"COLUMNS": "80"})
    assert f"{pending} of them for old-pacs, no longer configured" in shown.stdout
