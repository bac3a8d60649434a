"""Configuration is validated once at start-up: a bad key is named and the node does not start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.peers import echoscu, free_port, run_cli, toml_text


def serve_with(tmp_path: Path, text: str, env: dict[str, str] | None = None):
    config = tmp_path / "node.toml"
    config.write_text(text)
    return run_cli("serve", "--config", str(config), env=env, timeout=60)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[node]\ncolour = 'blue'\n", "node.colour"),
        ("[node]\nport = 'eleven'\n", "node.port"),
        ("[worklist]\nassembly_interval_seconds = 0\n", "worklist.assembly_interval_seconds"),
        ("[nodes]\nport = 1\n", "[nodes]"),
        ("[node\nport = 1\n", "not valid TOML"),
    ],
)
def test_bad_config_is_named_and_the_node_does_not_start(
    tmp_path: Path, text: str, named: str
) -> None:
    port = free_port()
    result = serve_with(tmp_path, text + f"\n# port {port}\n")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0]
    assert "Traceback" not in result.stderr
    assert echoscu(port).returncode != 0


def test_bad_environment_override_is_named(tmp_path: Path) -> None:
    result = serve_with(tmp_path, "", env={"DICOM_NODE_WORKLIST__STABLE_SECONDS": "-1"})
    assert result.returncode == 2
    assert "worklist.stable_seconds" in result.stderr


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli("serve", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "config file not found" in result.stderr


def test_environment_overrides_the_files(node_factory) -> None:
    node = node_factory("env")
    node.ae_title = "ENVNODE"
    node.start(env={"DICOM_NODE_NODE__AE_TITLE": "ENVNODE"})
    assert echoscu(node.port, called_ae="ENVNODE").returncode == 0
    assert node.events("listening")[0]["ae_title"] == "ENVNODE"


def test_port_in_use_is_one_line(node_factory, tmp_path: Path) -> None:
    node = node_factory("busy").start()
    config = toml_text(
        {
            "node": {"port": node.port, "host": "127.0.0.1", "data_dir": str(tmp_path / "other")},
            "worker": {"enabled": False},
        }
    )
    result = serve_with(tmp_path, config)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{node.port}" in result.stderr


def test_studies_cli_rejects_bad_input(node_factory) -> None:
    node = node_factory("cli")
    unknown = run_cli("studies", "show", "1.2.3.4", "--config", str(node.config_path))
    assert unknown.returncode == 2 and "no study" in unknown.stderr
    bad_state = run_cli("studies", "list", "--state", "LOST", "--config", str(node.config_path))
    assert bad_state.returncode == 2 and "unknown state 'LOST'" in bad_state.stderr


def test_status_says_when_the_model_is_missing_and_studies_will_wait(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        toml_text(
            {
                "node": {"data_dir": str(tmp_path / "data")},
                "model": {"checkpoints": [str(tmp_path / "absent.pt")]},
            }
        )
    )
    result = run_cli("status", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "NOT FOR CLINICAL USE" in result.stdout
    assert f"MISSING {tmp_path / 'absent.pt'}: studies wait in QUEUED" in result.stdout
    report = json.loads(run_cli("status", "--config", str(config), "--json").stdout)
    assert report["model"]["ready"] is False
    assert report["model"]["checkpoints"] == [{
        "path": str(tmp_path / "absent.pt"), "present": False,
        "card": "not for clinical use (no model card absent.card.toml)"}]
