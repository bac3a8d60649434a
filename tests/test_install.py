"""The install that runs anywhere: a wheel built from this tree, installed into a fresh venv
outside the checkout, serves a study end to end from another directory, with the shipped defaults
and demo model found as package data and a relative data_dir resolved against its config file.

The new venv takes its dependencies from this interpreter's site-packages through a .pth file
(no download); the wheel itself is installed with --no-deps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.dicom_factory import make_radiograph, write
from tests.peers import REPO_ROOT, echoscu, free_port, store_responses, storescu, toml_text

pytestmark = pytest.mark.slow

# What a build must not pick up from the working tree (the venv, caches, earlier builds, data).
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "data", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".ruff_cache")


def _run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                            check=False, timeout=timeout)
    assert result.returncode == 0, f"{argv}:\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env() -> dict[str, str]:
    """The environment without what would import the checkout (PYTHONPATH) or the project
    venv (VIRTUAL_ENV), and without any DICOM_NODE_ setting of the caller."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("DICOM_NODE_")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv outside the checkout with the wheel of this tree installed; its folder."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: the build writes nothing into the checkout
    shutil.copytree(REPO_ROOT, source, ignore=_NOT_SOURCE)
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"),
          "."], cwd=source)
    (wheel,) = (root / "dist").glob("dicom_node-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    purelib = _run([str(venv / "bin" / "python"), "-c",
                    "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root)
    ours = sysconfig.get_paths(vars={"base": sys.prefix, "platbase": sys.prefix})["purelib"]
    Path(purelib.stdout.strip(), "project-dependencies.pth").write_text(ours + "\n")
    _run([*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q",
          str(wheel)], cwd=root)
    return venv


def test_the_wheel_carries_the_shipped_files_and_is_what_runs(installed: Path, tmp_path: Path):
    probe = ("import dicom_node, json; from dicom_node.settings import load_settings; "
             "s = load_settings(environ={}); print(json.dumps([dicom_node.__file__, "
             "s.model.checkpoints, s.model.findings_file, s.data_path.is_absolute()]))")
    result = _run([str(installed / "bin" / "python"), "-c", probe], cwd=tmp_path)
    package_file, checkpoints, findings, absolute = json.loads(result.stdout)
    assert Path(package_file).is_relative_to(installed)  # not the checkout
    assert [Path(p).is_relative_to(installed) and Path(p).is_file() for p in checkpoints] == [True]
    assert Path(findings).is_relative_to(installed) and Path(findings).is_file()
    assert Path(checkpoints[0]).with_suffix(".card.toml").is_file()
    assert absolute


def test_serve_from_another_directory_takes_a_study_to_done(installed: Path, tmp_path: Path):
    site, cwd = tmp_path / "site", tmp_path / "somewhere-else"
    site.mkdir()
    cwd.mkdir()
    port = free_port()
    config = site / "cfg.toml"
    config.write_text(toml_text({
        "node": {"host": "127.0.0.1", "port": port, "data_dir": "data"},  # relative: site/data
        "worker": {"enabled": True, "poll_interval_seconds": 1},
        "worklist": {"stable_seconds": 1},
        "http": {"port": 0},  # the default 8080 may be taken on a shared machine
    }))
    dicom_node = str(installed / "bin" / "dicom-node")
    log = (tmp_path / "node.log").open("wb")
    node = subprocess.Popen([dicom_node, "serve", "--config", str(config)], cwd=cwd,
                            env=_clean_env(), stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        _wait_until_answering(node, port, tmp_path / "node.log")
        ds = make_radiograph(rows=256, columns=256)
        sent = storescu(port, [write(ds, tmp_path / "pa.dcm")])
        assert store_responses(sent.stdout + sent.stderr) == ["Success"]
        study = _wait_for_state(dicom_node, config, cwd, ds.StudyInstanceUID, "DONE")
        assert study["state"] == "DONE"
        assert (site / "data" / "worklist.sqlite").is_file()
        assert not (cwd / "data").exists()
        (started,) = _events(tmp_path / "node.log", "clinical_use_off")
        (checkpoint,) = started["cards"]  # the model the node loaded: the installed one
        assert Path(checkpoint).is_relative_to(installed)
    finally:
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()


def _wait_until_answering(node: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise AssertionError(f"node exited with {node.returncode}:\n{log.read_text()}")
        if echoscu(port).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"node did not answer C-ECHO:\n{log.read_text()}")


def _wait_for_state(dicom_node: str, config: Path, cwd: Path, study_uid: str, state: str,
                    timeout: float = 180) -> dict:
    """The study's row of `studies list --json` (run with the installed venv) once in `state`."""
    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        listed = _run([dicom_node, "studies", "list", "--json", "--config", str(config)], cwd=cwd)
        rows = [s for s in json.loads(listed.stdout) if s["study_instance_uid"] == study_uid]
        found = rows[0] if rows else {}
        if found.get("state") in (state, "FAILED", "SKIPPED"):
            return found
        time.sleep(1)
    return found


def _events(log: Path, name: str) -> list[dict]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == name:
            found.append(record)
    return found
