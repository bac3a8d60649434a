"""The README's commands on a fresh machine: `make test` names or installs the Debian peers, and
a peer whose start-up fails leaves no process behind."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.peers import REPO_ROOT, NodeProcess, StoreSCP, free_port


def _processes_mentioning(text: str) -> list[int]:
    """PIDs of live processes whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split(") ", 1)[1][:1]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(proc.name))
    return found


def _make_peers(*variables: str) -> subprocess.CompletedProcess[str]:
    """`make peers` as a user types it: when the suite itself runs under `make test` (as CI
    does), make's own variables are dropped so this is not a sub-make ("make[1]: ...")."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "-s", "--no-print-directory", "peers", *variables],
                          cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=60,
                          env=env)


@pytest.mark.skipif(shutil.which("make") is None or shutil.which("dpkg-query") is None,
                    reason="needs make and dpkg")
def test_make_names_missing_debian_packages_and_the_command_in_one_line():
    result = _make_peers("DEBIAN_PEERS=dcmtk dicom-node-no-such-package", "INSTALL_PEERS=no")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if not line.startswith("make: ***")]
    assert ours == [("make: missing Debian packages: dicom-node-no-such-package; install them "
                     "with: sudo apt-get install -y dicom-node-no-such-package")]


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs dpkg")
def test_make_is_silent_when_the_peers_are_installed():
    installed = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "dcmtk"],
                               capture_output=True, text=True, check=False)
    if "ok installed" not in installed.stdout:
        pytest.skip("dcmtk is not installed here")
    result = _make_peers("DEBIAN_PEERS=dcmtk", "INSTALL_PEERS=no")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_a_node_that_never_answers_is_stopped_by_start(tmp_path):
    node = NodeProcess.create(tmp_path / "silent")
    node.port = free_port()  # the readiness C-ECHO goes to a port nobody listens on
    with pytest.raises(RuntimeError, match="did not answer"):
        node.start(timeout=3)
    assert node.process is None
    assert _processes_mentioning(str(node.config_path)) == []


def test_a_storescp_that_cannot_bind_is_stopped_and_says_so(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))  # bound, not listening: storescp cannot bind, C-ECHO fails
        peer = StoreSCP(tmp_path / "scp", port=busy.getsockname()[1])
        with pytest.raises(RuntimeError, match="storescp"):
            peer.start()
    assert peer.process is None
    assert _processes_mentioning(str(tmp_path / "scp")) == []
