"""The file spool: every accepted instance as the peer's original bytes, written atomically.

Layout: `<spool>/<StudyInstanceUID>/<SOPInstanceUID>.dcm`. File names are derived from UIDs only
after they pass the path-safe UID check: at most 64 characters, only digits and dots, no empty
component (so no leading, trailing or doubled dot). That character set and length are what keep
a path inside the spool. PS3.5 9.1 also forbids leading zeros in a component, but real devices
send date-stamped UIDs such as `1.2.3.2026.011.029.7.01` and dcmtk and Orthanc accept them, so
that rule is deliberately not enforced: such a UID is stored and referenced unchanged.

A write is: temporary file in the target directory, fsync, os.replace, fsync of the directory.
A reader therefore sees either no file or the complete one, and a file that was acknowledged
survives a crash.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")  # ASCII digits only (no \d: it matches other scripts)
MAX_UID_LENGTH = 64
_WRITE_CHUNK = 1 << 20  # large single writes are markedly slower to the page cache here


class InvalidUID(ValueError):
    """A UID is missing, longer than 64 characters, or not digits separated by single dots."""

    def __init__(self, name: str, value: object) -> None:
        shown = repr(value)[:80]
        super().__init__(f"{name} is missing or not a valid DICOM UID: {shown}")
        self.name = name


def is_valid_uid(value: object) -> bool:
    """True when `value` is a str UID that is safe as a file name (see the module docstring);
    leading zeros in a component are accepted."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_UID_LENGTH
        and _UID_RE.fullmatch(value) is not None
    )


def checked_uid(name: str, value: object) -> str:
    """`value` if it is a valid UID, else InvalidUID naming the attribute."""
    if not is_valid_uid(value):
        raise InvalidUID(name, value)
    return str(value)


@dataclass(frozen=True)
class SpoolEntry:
    relative_path: str  # "<study>/<sop>.dcm", as stored in the work list
    path: Path
    size_bytes: int


class Spool:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def relative_path(self, study_uid: str, sop_uid: str) -> str:
        study = checked_uid("StudyInstanceUID", study_uid)
        sop = checked_uid("SOPInstanceUID", sop_uid)
        return f"{study}/{sop}.dcm"

    def absolute(self, relative_path: str) -> Path:
        """The file for a work-list `spool_path`, refusing anything outside the spool."""
        candidate = (self.root / relative_path).resolve()
        if not candidate.is_relative_to(self.root.resolve()):
            raise ValueError(f"spool path escapes the spool: {relative_path!r}")
        return candidate

    def exists(self, study_uid: str, sop_uid: str) -> bool:
        return (self.root / self.relative_path(study_uid, sop_uid)).is_file()

    def write(
        self, study_uid: str, sop_uid: str, chunks: Iterable[bytes | memoryview]
    ) -> SpoolEntry:
        """Atomically (re)place the file for this instance with `chunks`; durable on return."""
        relative = self.relative_path(study_uid, sop_uid)
        target = self.root / relative
        directory = target.parent
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            _fsync_directory(directory.parent)
        temporary = directory / f".{target.name}.{os.getpid()}.{_thread_token()}.{HOST_TOKEN}.tmp"
        try:
            size = _write_and_sync(temporary, chunks)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(directory)
        return SpoolEntry(relative_path=relative, path=target, size_bytes=size)

    def files(self) -> list[str]:
        """Relative paths of every complete file (`<study>/<sop>.dcm`), for reconciliation."""
        if not self.root.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob("*/*.dcm")
                      if not p.name.startswith("."))

    def temporaries(self) -> list[tuple[Path, str, int]]:
        """Temporary files of writes in progress or interrupted, each with its writer's host
        (HOST_TOKEN; "" for a file named before hosts were recorded) and pid (-1: unknown).
        On a spool shared by several hosts only the writer's host can tell whether it is
        still being written."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.glob("*/.*.tmp"):
            stem = path.name.removesuffix(".tmp")
            _, pid, _, host = stem.rsplit(".", 3) if stem.count(".") >= 4 else ("", "", "", "")
            if not pid.isdigit():  # the older name: .<sop>.dcm.<pid>.<thread>.tmp
                host = ""
                pid = stem.rsplit(".", 2)[-2] if stem.count(".") >= 3 else ""
            found.append((path, host, int(pid) if pid.isdigit() else -1))
        return found

    def free_bytes(self) -> int:
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def used_bytes(self) -> int:
        """Bytes held in spool files (walks the tree; for status reports, not the hot path)."""
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    continue
        return total


def _write_and_sync(path: Path, chunks: Iterable[bytes | memoryview]) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    size = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), _WRITE_CHUNK):
                size += _write_all(fd, view[start : start + _WRITE_CHUNK])
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _write_all(fd: int, view: memoryview) -> int:
    written = 0
    while written < len(view):
        written += os.write(fd, view[written:])
    return written


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


HOST_TOKEN = socket.gethostname().replace(".", "_").replace("/", "_") or "host"


def _thread_token() -> str:
    return f"{threading.get_ident():x}"
