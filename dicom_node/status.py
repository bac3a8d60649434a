"""DICOM status codes by name (PS3.4 Annex B.2 storage, PS3.7 Annex C), and the one mapping
from intake failures to the status a peer receives. Handlers never write raw hex."""

from __future__ import annotations

import errno
import sqlite3

from storage.db import is_unavailable
from storage.spool import InvalidUID

SUCCESS = 0x0000
# Failures (PS3.4 Table B.2-1 and PS3.7 C.4.2)
# refused: out of resources (disk floor, disk full, inflate cap, work list database unreachable)
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND_UIDS = 0xC210  # a UID needed to file the instance is missing or invalid
CANNOT_UNDERSTAND_DATASET = 0xC212  # the data set could not be parsed
PROCESSING_FAILURE = 0x0110  # our side failed (spool or database); the peer may retry
SOP_CLASS_NOT_SUPPORTED = 0x0122

_DESCRIPTIONS = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    CANNOT_UNDERSTAND_UIDS: "Error: Cannot understand (UIDs)",
    CANNOT_UNDERSTAND_DATASET: "Error: Cannot understand (data set)",
    PROCESSING_FAILURE: "Processing failure",
    SOP_CLASS_NOT_SUPPORTED: "SOP Class not supported",
}


class IntakeRefused(Exception):
    """A C-STORE that the node refuses for a reason the peer should hear about."""

    status = PROCESSING_FAILURE


class OutOfResources(IntakeRefused):
    status = OUT_OF_RESOURCES


class DataSetTooLarge(OutOfResources):
    """A Deflated data set inflates beyond `[node] max_inflated_mb`."""


class DatasetMismatch(IntakeRefused):
    status = DATASET_DOES_NOT_MATCH_SOP_CLASS


class UnreadableDataset(IntakeRefused):
    status = CANNOT_UNDERSTAND_DATASET


class UnsupportedSOPClass(IntakeRefused):
    status = SOP_CLASS_NOT_SUPPORTED


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL: "database or disk is full"
_POSTGRES_DISK_FULL = "53100"  # SQLSTATE disk_full (psycopg's errors.DiskFull)


def status_for(exc: BaseException) -> int:
    """The status to answer when storing failed with `exc`."""
    if isinstance(exc, IntakeRefused):
        return exc.status
    if isinstance(exc, InvalidUID):
        return CANNOT_UNDERSTAND_UIDS
    if is_disk_full(exc) or is_unavailable(exc):
        return OUT_OF_RESOURCES  # transient: the peer sends again later, nothing was accepted
    return PROCESSING_FAILURE


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or an error it wraps (SQLAlchemy's `.orig`, `__cause__`), says the disk
    or database is full: ENOSPC/EDQUOT from a write, SQLITE_FULL, PostgreSQL SQLSTATE 53100."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if isinstance(current, sqlite3.Error) and _sqlite_full(current):
            return True
        codes = (getattr(current, "sqlstate", None), getattr(current, "pgcode", None))
        if _POSTGRES_DISK_FULL in codes:
            return True
        wrapped = getattr(current, "orig", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return False


def _sqlite_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF == _SQLITE_FULL
    return "database or disk is full" in str(exc)


def error_comment(exc: BaseException, answer: int) -> str:
    """An Error Comment (0000,0902; LO: <= 64 characters, no backslash) for a failure answer:
    the refusal's reason, or a generic phrase when the failure was unexpected."""
    text = "processing failure" if answer == PROCESSING_FAILURE else str(exc)
    if answer == OUT_OF_RESOURCES and not isinstance(exc, IntakeRefused):
        text = "work list unavailable, retry later" if is_unavailable(exc) else (
            "disk or database full")
    printable = "".join(c if c.isascii() and c.isprintable() and c != "\\" else "?" for c in text)
    return printable[:64]


def describe(status: int) -> str:
    return _DESCRIPTIONS.get(status, f"status 0x{status:04X}")
