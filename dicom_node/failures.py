"""Which worker errors retrying can fix.

A study whose processing raised is tried again only when the cause can go away by itself: the
disk or the network (OSError), the database (a locked or lost connection), memory. An error
that the same inputs will raise again (a build error from a header value, a spooled file that
is gone or is not DICOM) fails the study at once, with its reason, instead of costing
`max_attempts` leases. Retry timing is the work list's business (`worklist.fail`).
"""

from __future__ import annotations

from pathlib import PurePath

from pydicom.errors import InvalidDicomError

from dicom_node.logs import redact
from storage.spool import is_valid_uid

_NODE_FILE_ROOTS = {"spool": "spool", "outbox": "outbox"}  # <data_dir>/<root>/<study>/<sop>.dcm

# Deterministic: the same inputs raise them again. FileNotFoundError before OSError: a spool
# file that is gone does not come back.
_PERMANENT = (
    FileNotFoundError,
    IsADirectoryError,
    InvalidDicomError,
    ValueError,  # includes UnicodeError; pydicom's and highdicom's refusals of a value
    TypeError,
    AttributeError,  # a header attribute that is not there
    LookupError,  # KeyError, IndexError
    NotImplementedError,  # e.g. a transfer syntax no installed decoder handles
    ArithmeticError,
)


def is_permanent(exc: BaseException) -> bool:
    """True when retrying the study cannot help (see the module docstring); False for
    transient errors (OSError other than a missing file, database OperationalError,
    MemoryError, TimeoutError) and for anything unrecognised, which is retried up to
    `max_attempts` rather than given up on."""
    return isinstance(exc, _PERMANENT)


def describe(exc: BaseException) -> str:
    """The reason recorded and logged for a failed attempt: the exception type and message,
    with the values in the message redacted (libraries quote the header value they refused).
    A spool or outbox file that is gone is named by its path under that folder (UIDs only, no
    patient data), e.g. "the spool file 1.2.3/1.2.3.4.dcm is missing (deleted outside the
    node?)"."""
    missing = _missing_node_file(exc)
    if missing is not None:
        return missing
    return redact(f"{type(exc).__name__}: {exc}")


def _missing_node_file(exc: BaseException) -> str | None:
    if not isinstance(exc, FileNotFoundError) or not exc.filename:
        return None
    path = PurePath(str(exc.filename))
    if len(path.parts) < 3 or path.parent.parent.name not in _NODE_FILE_ROOTS:
        return None
    study, sop = path.parent.name, path.name.removesuffix(".dcm")
    if not (is_valid_uid(study) and is_valid_uid(sop)):
        return None
    root = _NODE_FILE_ROOTS[path.parent.parent.name]
    return f"the {root} file {study}/{path.name} is missing (deleted outside the node?)"
