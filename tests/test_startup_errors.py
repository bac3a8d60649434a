"""`serve` and the read-only commands fail in one line naming what is wrong, before binding
anything else, loading a model or starting a thread; never a traceback."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from dicom_node.shipped import demo_checkpoint
from ml.model_card import DEMO_CHECKPOINT_SHA256, file_sha256, read_card
from tests.peers import echoscu, run_cli, toml_text


def _config(tmp_path: Path, **sections) -> Path:
    merged = {"node": {"host": "127.0.0.1", "port": _free(), "data_dir": str(tmp_path / "data")},
              "worker": {"enabled": False}, "logging": {"format": "json"}}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    path = tmp_path / "node.toml"
    path.write_text(toml_text(merged))
    return path


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_line_error(result, *words: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]
    return lines[0]


def test_an_environment_variable_that_is_not_a_key_is_named(tmp_path):
    result = run_cli("serve", "--config", str(_config(tmp_path)),
                     env={"DICOM_NODE_NODE_PORT": "11113"})
    _one_line_error(result, "DICOM_NODE_NODE_PORT", "DICOM_NODE_NODE__PORT")


@pytest.mark.parametrize("where", ["under_a_file", "in_proc"])
def test_an_impossible_data_dir_is_named(tmp_path, where):
    (tmp_path / "a-file").write_text("")
    data_dir = tmp_path / "a-file" / "data" if where == "under_a_file" else Path("/proc/dn-data")
    result = run_cli("serve", "--config", str(_config(tmp_path, node={"data_dir": str(data_dir)})))
    _one_line_error(result, "node.data_dir", str(data_dir))


def test_a_port_in_use_fails_in_one_line_before_anything_starts(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = _config(tmp_path, node={"port": port})
        result = run_cli("serve", "--config", str(config))
    _one_line_error(result, f"cannot listen on 127.0.0.1:{port}")
    assert not (tmp_path / "data" / "worklist.sqlite").exists()  # nothing opened before the bind


def test_allowed_peer_hosts_takes_networks_and_names(node_factory):
    node = node_factory("cidr", node={"allowed_peer_hosts": ["192.0.2.0/24", "127.0.0.0/8",
                                                              "localhost"]})
    node.start()  # the readiness C-ECHO comes from 127.0.0.1: inside 127.0.0.0/8
    assert echoscu(node.port).returncode == 0


@pytest.mark.parametrize("entry", ["no-such-host.invalid", "10.0.0.0/33"])
def test_an_unusable_allowed_peer_host_is_refused_at_start_up(tmp_path, entry):
    config = _config(tmp_path, node={"allowed_peer_hosts": [entry]})
    result = run_cli("serve", "--config", str(config))
    _one_line_error(result, "node.allowed_peer_hosts", entry)


def test_clinical_use_is_refused_for_the_demo_model(tmp_path):
    result = run_cli("serve", "--config", str(_config(tmp_path, model={"clinical_use": True})))
    _one_line_error(result, "model.clinical_use", "demo model")


def test_clinical_use_needs_a_model_card_that_clears_the_same_weights(tmp_path):
    checkpoint = tmp_path / "site-model.pt"
    checkpoint.write_bytes(b"not the demo weights")
    config = _config(tmp_path, model={"clinical_use": True, "checkpoints": [str(checkpoint)]})
    _one_line_error(run_cli("serve", "--config", str(config)), "has no model card")

    card = tmp_path / "site-model.card.toml"
    card.write_text('clinical_use = true\nclearance = "site approval 42"\nsha256 = "00"\n')
    _one_line_error(run_cli("serve", "--config", str(config)), "other weights")


def test_a_card_that_does_not_clear_its_model_is_quoted_in_the_refusal(tmp_path):
    checkpoint = tmp_path / "research.pt"
    checkpoint.write_bytes(b"research weights")
    sha256 = file_sha256(checkpoint)
    (tmp_path / "research.card.toml").write_text(
        f'clinical_use = false\nclearance = "research use only"\nsha256 = "{sha256}"\n')
    config = _config(tmp_path, model={"clinical_use": True, "checkpoints": [str(checkpoint)]})
    _one_line_error(run_cli("serve", "--config", str(config)), "does not clear it",
                    "(research use only)")


def test_the_demo_model_ships_a_card_for_its_own_weights():
    card = read_card(demo_checkpoint())
    assert card is not None and card.clinical_use is False
    assert card.sha256 == file_sha256(demo_checkpoint())  # retrained weights need a new card
    assert card.sha256 in DEMO_CHECKPOINT_SHA256
    assert card.clearance.startswith("none: demo model")


def test_status_and_start_up_say_demo_model_not_for_clinical_use_from_the_card(tmp_path,
                                                                               node_factory):
    statement = ("not for clinical use (demo-synthetic-v2.card.toml: none: demo model trained "
                 "by dicom-node's own code")
    result = run_cli("status", "--config", str(_config(tmp_path)))  # the shipped model
    assert result.returncode == 0, result.stderr
    assert f"card     {statement}" in result.stdout.replace("\n", " ")
    node = node_factory("demo").start()
    (event,) = node.events("clinical_use_off")
    (said,) = event["cards"].values()
    assert said.startswith(statement)


def test_clinical_use_with_a_clearing_card_starts_and_logs_the_hashes(tmp_path, node_factory):
    checkpoint = tmp_path / "site-model.pt"
    checkpoint.write_bytes(b"cleared weights")
    sha256 = file_sha256(checkpoint)
    (tmp_path / "site-model.card.toml").write_text(
        f'clinical_use = true\nclearance = "site approval 42"\nsha256 = "{sha256}"\n')
    node = node_factory("clinical", model={"clinical_use": True,
                                           "checkpoints": [str(checkpoint)]})
    node.start()
    (event,) = node.events("clinical_use_enabled")
    assert event["checkpoints_sha256"] == {str(checkpoint): sha256}


def test_read_only_commands_do_not_create_a_work_list(tmp_path):
    config = _config(tmp_path)
    for command in (["status", "--json"], ["studies", "list", "--json"]):
        result = run_cli(*command, "--config", str(config))
        assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert not (tmp_path / "data" / "worklist.sqlite").exists()


@pytest.mark.parametrize("command", [("studies", "list"), ("status",), ("outbound", "list"),
                                     ("serve",)], ids=" ".join)
def test_a_database_server_that_does_not_answer_is_one_line(tmp_path, command):
    """PostgreSQL's own message runs over lines and SQLAlchemy adds a link: folded to one,
    with the password hidden."""
    url = f"postgresql+psycopg://node:s3cret@127.0.0.1:{_free()}/worklist"
    result = run_cli(*command, "--config", str(_config(tmp_path, database={"url": url})))
    line = _one_line_error(result, "cannot open the database", "node:***@127.0.0.1",
                           "Connection refused")
    assert "s3cret" not in line and "sqlalche.me" not in line
