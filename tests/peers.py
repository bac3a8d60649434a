"""Real peers for tests and benches: the node as a subprocess, dcmtk echoscu/storescu/storescp.

Everything runs on loopback with free ports and temporary directories; every process started
here is stopped by its owner (fixtures call `stop()` at teardown). A `start()` that fails (the
peer exits, never answers, or the wait is interrupted) stops its own process before raising, and
whatever is still running when the interpreter exits is stopped then (`_stop_leftovers`).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# dcmtk by its path: pynetdicom installs same-named storescu/storescp/echoscu scripts in the venv.
DCMTK_BIN = Path("/usr/bin")
START_TIMEOUT_SECONDS = 60.0

# Every process a peer started and has not yet stopped: a safety net for an interrupted run.
_RUNNING: set[subprocess.Popen[bytes]] = set()


def _spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen, remembered until `_reap` so that nothing outlives the test run."""
    process = subprocess.Popen(list(argv), **kwargs)
    _RUNNING.add(process)
    return process


def _reap(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM,
          timeout: float = 60) -> int:
    """Send `sig` to a still-running process, wait (kill after `timeout` s); its exit status."""
    if process is None:
        return 0
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _RUNNING.discard(process)
    return int(process.returncode)


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_RUNNING):
        _reap(process, signal.SIGKILL)


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_text(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """A TOML document for flat sections of str/int/float/bool/list values."""
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def dicom_node_command() -> list[str]:
    """How to run the `dicom-node` CLI with this interpreter's environment."""
    script = Path(sys.executable).with_name("dicom-node")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from dicom_node.cli import main; main()"]


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60):
    """Run `dicom-node ARGS...` and return the CompletedProcess (text output)."""
    return subprocess.run(
        [*dicom_node_command(), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )


# --- dcmtk clients ----------------------------------------------------------------------------


def echoscu(
    port: int, *, calling_ae: str = "ECHOSCU", called_ae: str = "AINODE", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(DCMTK_BIN / "echoscu"),
            "-v",
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            "-to",
            "10",
            "127.0.0.1",
            str(port),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def storescu(
    port: int,
    files: Iterable[Path],
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "AINODE",
    options: Sequence[str] = (),
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """dcmtk storescu, verbose, all files over one association."""
    return subprocess.run(
        [
            str(DCMTK_BIN / "storescu"),
            "-v",
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            "-to",
            "30",
            *options,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def store_responses(output: str) -> list[str]:
    """The status text of every 'Received Store Response (...)' line of storescu -v."""
    found = []
    for line in output.splitlines():
        marker = "Received Store Response ("
        if marker in line:
            found.append(line.split(marker, 1)[1].rsplit(")", 1)[0])
    return found


# --- the node as a subprocess ----------------------------------------------------------------


@dataclass
class NodeProcess:
    """`dicom-node serve` with its own config file and data directory."""

    workdir: Path
    port: int
    ae_title: str = "AINODE"
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "node.toml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def http_url(self) -> str:
        """The node's HTTP server (/healthz, /readyz, /metrics)."""
        http = self.sections["http"]
        return f"http://{http['host']}:{http['port']}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    @classmethod
    def create(cls, workdir: Path, **sections: dict[str, Any]) -> NodeProcess:
        """Write the config for a node: free port, data dir in `workdir`, quick assembly, and no
        inference worker unless a test asks for one (`worker={"enabled": True}`)."""
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        merged: dict[str, dict[str, Any]] = {
            "node": {
                "port": port,
                "host": "127.0.0.1",
                "data_dir": str(workdir / "data"),
                "min_free_disk_mb": 1,
            },
            "worklist": {"stable_seconds": 1, "assembly_interval_seconds": 0.25},
            "logging": {"format": "json", "level": "INFO"},
            "worker": {"enabled": False},
            "http": {"host": "127.0.0.1", "port": free_port()},
        }
        for name, values in sections.items():
            merged.setdefault(name, {}).update(values)
        node = cls(
            workdir=workdir,
            port=int(merged["node"]["port"]),
            ae_title=str(merged["node"].get("ae_title", "AINODE")),
            sections=merged,
        )
        node.config_path.write_text(toml_text(merged))
        return node

    def start(
        self,
        wait: bool = True,
        env: Mapping[str, str] | None = None,
        timeout: float = START_TIMEOUT_SECONDS,
    ) -> NodeProcess:
        """Run `dicom-node serve` (extra environment in `env`); wait until it answers C-ECHO
        (up to `timeout` s). If that wait fails, the process is killed before the error rises."""
        log = self.log_path.open("ab")
        self.process = _spawn(
            [*dicom_node_command(), "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
        )
        log.close()
        if wait:
            try:
                self.wait_until_answering(timeout)
            except BaseException:  # also KeyboardInterrupt and pytest-timeout: never leave it
                self.stop(signal.SIGKILL, timeout=10)
                raise
        return self

    def wait_until_answering(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Poll with C-ECHO until the node answers (or fail with its log)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}:\n{self.log()}")
            if echoscu(self.port, called_ae=self.ae_title).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"node did not answer C-ECHO within {timeout} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send `sig` and wait; returns the exit status (negative: killed by a signal)."""
        code = _reap(self.process, sig, timeout)
        self.process = None
        return code

    def kill_hard(self) -> int:
        return self.stop(signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """The node's JSON log lines (optionally only those with event == name)."""
        return _events(self.log(), name)

    def cli_json(self, *args: str) -> Any:
        result = run_cli(*args, "--json", "--config", str(self.config_path))
        if result.returncode != 0:
            raise RuntimeError(f"dicom-node {' '.join(args)} failed: {result.stderr}")
        return json.loads(result.stdout)

    def study(self, study_uid: str) -> Any:
        """The work-list summary of a study, read directly from the node's database (fast)."""
        from storage import worklist
        from storage.db import open_database

        url = self.sections.get("database", {}).get("url") or (
            f"sqlite:///{self.data_dir / 'worklist.sqlite'}")
        database = open_database(url, migrate=False)
        try:
            with database.read_only() as session:
                detail = worklist.study_detail(session, study_uid)
        finally:
            database.dispose()
        return None if detail is None else detail[0]

    def wait_for_state(self, study_uid: str, state: str, timeout: float = 60) -> Any:
        def reached() -> Any:
            summary = self.study(study_uid)
            return summary if summary is not None and summary.state == state else None

        return self.wait_for(reached, f"study {study_uid} to be {state}", timeout)

    def wait_for(self, predicate: Any, what: str, timeout: float = 60) -> Any:
        """Poll `predicate()` until it returns something truthy (assembly is periodic)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}")


@dataclass
class WorkerProcess:
    """`dicom-node worker` (no listener) with a node's config: another process, or another
    host's, working on the same work list."""

    config_path: Path
    log_path: Path
    args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = _spawn(
            [*dicom_node_command(), "worker", "--config", str(self.config_path), *self.args],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=dict(os.environ),
        )
        log.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        code = _reap(self.process, sig, timeout)
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        return _events(self.log(), name)


def _events(text: str, name: str | None) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and (name is None or record.get("event") == name):
            found.append(record)
    return found


# --- dcmtk storescp ----------------------------------------------------------------------------


@dataclass
class StoreSCP:
    """dcmtk storescp writing what it receives into `output_dir`."""

    output_dir: Path
    port: int = field(default_factory=free_port)
    ae_title: str = "STORESCP"
    max_pdu: int = 131072  # dcmtk caps PDUs at 128 KiB
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        if not (DCMTK_BIN / "storescp").exists():
            raise RuntimeError("dcmtk storescp is not installed")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.process = _spawn(
            [
                str(DCMTK_BIN / "storescp"),
                "-aet",
                self.ae_title,
                "-od",
                str(self.output_dir),
                "-pdu",
                str(self.max_pdu),
                "-dhl",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"storescp exited with {self.process.returncode}")
                if echoscu(self.port, called_ae=self.ae_title).returncode == 0:
                    return self
                time.sleep(0.1)
            raise RuntimeError("storescp did not answer C-ECHO")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        _reap(self.process, timeout=10)
        self.process = None


# --- Orthanc as the PACS (report helper) --------------------------------------------------------


@dataclass
class OrthancPeer:
    """The Debian `orthanc` server with its own config, storage and ports on loopback; HTTP
    without authentication (loopback only, RemoteAccessAllowed false)."""

    workdir: Path
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    ae_title: str = "ORTHANC"
    process: subprocess.Popen[bytes] | None = None
    dicomweb: bool = False  # load the Debian orthanc-dicomweb plugin (/dicom-web/)

    BINARY = "/usr/sbin/Orthanc"
    DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "dicom-node-test-pacs",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "Plugins": [self.DICOMWEB_PLUGIN] if self.dicomweb else [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "StorageCompression": False,
        }
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self) -> OrthancPeer:
        if not Path(self.BINARY).exists():
            raise RuntimeError("Orthanc is not installed (Debian package orthanc)")
        if self.dicomweb and not Path(self.DICOMWEB_PLUGIN).exists():
            raise RuntimeError("Orthanc's DICOMweb plugin is not installed (orthanc-dicomweb)")
        config = self.write_config()
        log = self.log_path.open("ab")
        self.process = _spawn(
            [self.BINARY, str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
        )
        log.close()
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log_path.read_text(errors='replace')}")
            try:
                self.get("/system")
            except OSError:
                time.sleep(0.1)
                continue
            if echoscu(self.dicom_port, called_ae=self.ae_title).returncode == 0:
                return
        raise RuntimeError("Orthanc did not answer C-ECHO")

    def stop(self) -> None:
        _reap(self.process, timeout=20)
        self.process = None

    # REST API

    def get(self, path: str) -> Any:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def get_bytes(self, path: str) -> bytes:
        import urllib.request

        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return bytes(response.read())

    def study_instances(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study as Orthanc's simplified tags plus its Orthanc `ID`."""
        found = []
        for study_id in self.get("/studies"):
            study = self.get(f"/studies/{study_id}")
            if study["MainDicomTags"].get("StudyInstanceUID") != study_instance_uid:
                continue
            for instance in self.get(f"/studies/{study_id}/instances"):
                tags = self.get(f"/instances/{instance['ID']}/simplified-tags")
                found.append({**tags, "ID": instance["ID"]})
        return found

    def instance_count(self) -> int:
        return int(self.get("/statistics")["CountInstances"])


# --- PostgreSQL (the shared work list) --------------------------------------------------------


@dataclass
class PostgresServer:
    """The Debian `postgresql` server: `initdb` into a temporary directory, `postgres` on a free
    loopback port with its unix socket in that directory; trust authentication (loopback only).
    Run as the `postgres` user when the tests run as root (the server refuses root), so the
    directory is its own under the system temporary directory (pytest's is private to root).
    `stop()` stops the server (it can be started again); `close()` also deletes the directory."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dicom-node-pg-")))
    port: int = field(default_factory=free_port)
    user: str = "dicom_node"
    fsync: bool = False  # tests need no durability across a power cut; benches ask for it
    process: subprocess.Popen[bytes] | None = None
    _databases: int = 0

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    @staticmethod
    def binary(name: str) -> str:
        import shutil

        for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
            return str(candidate)
        found = shutil.which(name)
        if found is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
        return found

    @staticmethod
    def _server_user() -> dict[str, Any]:
        """Popen arguments that run a program as `postgres` when we are root."""
        if os.geteuid() != 0:
            return {}
        return {"user": "postgres", "group": "postgres", "extra_groups": []}

    def start(self) -> PostgresServer:
        """initdb (first start only), then start the server and wait until it accepts a
        connection; on any failure the server process is stopped before the error rises."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.workdir, "postgres", "postgres")
        if not (self.data_dir / "PG_VERSION").exists():
            initdb = subprocess.run(
                [self.binary("initdb"), "-D", str(self.data_dir), "-U", self.user,
                 "--auth=trust", "-E", "UTF8", "--no-sync"],
                capture_output=True, text=True, check=False, timeout=120, cwd=self.workdir,
                **self._server_user(),
            )
            if initdb.returncode != 0:
                raise RuntimeError(f"initdb failed: {initdb.stderr.strip()}")
        log = self.log_path.open("ab")
        if os.geteuid() == 0:
            import shutil

            shutil.chown(self.log_path, "postgres", "postgres")
        self.process = _spawn(
            [self.binary("postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.workdir), "-c", "max_connections=200",
             *([] if self.fsync else ["-c", "fsync=off", "-c", "full_page_writes=off"])],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, **self._server_user(),
        )
        log.close()
        try:
            self._wait_until_answering()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_answering(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"postgres exited: {self.log_path.read_text(errors='replace')}")
            try:
                psycopg.connect(self.dsn(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections")

    def dsn(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"

    def create_database(self, template: str | None = None) -> str:
        """A new empty database (a copy of `template` when given); its name."""
        import psycopg

        self._databases += 1
        name = f"worklist_{os.getpid()}_{self._databases}"
        clause = f" TEMPLATE {template}" if template else ""
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}{clause}")
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the server (SIGINT: fast shutdown; SIGKILL: a crash)."""
        _reap(self.process, sig, timeout=30)
        self.process = None

    def close(self) -> None:
        import shutil

        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
