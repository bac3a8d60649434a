"""Paths in the configuration mean the same files whatever directory a command runs in: a config
file's relative paths are from its own folder, the shipped defaults' from the installed package,
the environment's from the current directory; data_dir's default is absolute."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dicom_node
from dicom_node.settings import ConfigError, load_settings
from tests.peers import run_cli, toml_text


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory: a folder that is neither the config's nor the checkout."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def write_config(folder: Path, sections: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "node.toml"
    path.write_text(toml_text(sections))
    return path


def test_relative_paths_in_a_config_file_are_from_its_folder(tmp_path: Path, elsewhere: Path):
    config = write_config(tmp_path / "site", {
        "node": {"data_dir": "data"},
        "model": {"checkpoints": ["weights/a.pt", "../shared/b.pt"], "findings_file": "cat.toml"},
    })
    settings = load_settings(config, environ={})
    assert settings.data_path == tmp_path / "site" / "data"
    assert settings.model.checkpoints == [str(tmp_path / "site" / "weights" / "a.pt"),
                                          str(tmp_path / "shared" / "b.pt")]
    assert settings.resolve(settings.model.findings_file) == tmp_path / "site" / "cat.toml"


def test_a_config_file_given_by_a_relative_name_still_anchors_at_its_folder(tmp_path: Path,
                                                                              elsewhere: Path):
    write_config(elsewhere / "conf", {"node": {"data_dir": "spooldata"}})
    settings = load_settings("conf/node.toml", environ={})
    assert settings.data_path == elsewhere / "conf" / "spooldata"


def test_environment_paths_are_from_the_current_directory(tmp_path: Path, elsewhere: Path):
    config = write_config(tmp_path / "site", {"node": {"data_dir": "data"}})
    settings = load_settings(config, environ={"DICOM_NODE_NODE__DATA_DIR": "here",
                                              "DICOM_NODE_MODEL__CHECKPOINTS": '["m.pt"]'})
    assert settings.data_path == elsewhere / "here"
    assert settings.model.checkpoints == [str(elsewhere / "m.pt")]


def test_shipped_defaults_point_into_the_installed_package(elsewhere: Path):
    settings = load_settings(environ={})
    package = Path(dicom_node.__file__).parent
    (checkpoint,) = (settings.resolve(p) for p in settings.model.checkpoints)
    assert checkpoint == package / "shipped" / "models" / "demo-synthetic-v2.pt"
    assert checkpoint.is_file()
    assert settings.resolve(settings.model.findings_file).is_file()
    assert settings.data_path == Path.home() / ".local" / "share" / "dicom-node"


def test_an_empty_data_dir_is_named(tmp_path: Path):
    config = write_config(tmp_path, {"node": {"data_dir": ""}})
    with pytest.raises(ConfigError, match="node.data_dir"):
        load_settings(config, environ={})


def test_status_shows_the_absolute_data_dir_of_a_relative_setting(tmp_path: Path):
    config = write_config(tmp_path / "site", {"node": {"data_dir": "data"}})
    result = run_cli("status", "--config", str(config), "--json")  # runs in the checkout
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["data_dir"] == str(tmp_path / "site" / "data")
    text = run_cli("status", "--config", str(config))
    assert f"data     {tmp_path / 'site' / 'data'}" in text.stdout
    assert not (tmp_path / "site" / "data").exists()  # a read-only command creates nothing


def test_shared_dir_holds_spool_and_outbox_and_defaults_to_data_dir(tmp_path: Path,
                                                                     elsewhere: Path):
    alone = load_settings(write_config(tmp_path / "alone", {"node": {"data_dir": "data"}}),
                          environ={})
    assert (alone.spool_path, alone.outbox_path) == (
        tmp_path / "alone" / "data" / "spool", tmp_path / "alone" / "data" / "outbox")
    shared = load_settings(write_config(tmp_path / "intake-1", {
        "node": {"data_dir": "data", "shared_dir": "../nfs/dicom-node"}}), environ={})
    assert shared.data_path == tmp_path / "intake-1" / "data"  # the SQLite file stays local
    assert (shared.spool_path, shared.outbox_path) == (
        tmp_path / "nfs" / "dicom-node" / "spool", tmp_path / "nfs" / "dicom-node" / "outbox")
