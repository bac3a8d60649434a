"""Structured logging: one JSON object per line (default) or `key=value` text.

Use `log_event(logger, "instance_stored", sop_instance_uid=..., calling_ae=...)`. Fields carry
UIDs, AE titles and peer addresses; never patient names or IDs. As a safety net the formatter
drops any field whose name says it is a patient identifier, and free text it did not write
(third-party log records, Python warnings, exception messages) has its values redacted:
pydicom and highdicom quote the values they complain about, e.g. a patient's name.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, TextIO

from dicom_node.settings import LoggingSettings
from storage.spool import is_valid_uid

_FIELDS_ATTR = "dicom_node_fields"
_EVENT_ATTR = "dicom_node_event"
_PHI_MARKERS = ("patient", "birth", "accession", "physician", "operator", "institution")
_OWN_LOGGERS = ("dicom_node", "storage", "ml")
REDACTED = "<redacted>"
_QUOTED = re.compile(r"""b?(['"`])(.*?)\1""")
_UNQUOTED_VALUE = re.compile(r"[^\s'\"`]*\^[^\s'\"`]*|\b\d[\d.:-]{5,}\d\b")
_TAG = re.compile(r"^\(?[0-9A-Fa-f]{4}, ?[0-9A-Fa-f]{4}\)?$")
# Python's own messages quote type, module and attribute names, never values: kept whole.
_PYTHON_MESSAGE = re.compile(
    r"(?:module '[\w.]+'|'\w+' object) has no attribute '\w+'"
    r"|'\w+' object is not (?:subscriptable|callable|iterable)"
)
_VRS = frozenset((
    "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
    "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
    "UR", "US", "UT", "UV",
))
_WORD = re.compile(r"\b[A-Z][A-Za-z0-9]{3,}\b")
# pydicom's PS3.5 complaint about a UI value (warn_and_log: a "pydicom" log line and a warning)
_UID_COMPLAINT = re.compile(r"Invalid value for VR UI: b?'([^']*)'")


def log_event(
    logger: logging.Logger,
    event: str,
    *,
    level: int = logging.INFO,
    message: str = "",
    exc_info: bool = False,
    **fields: Any,
) -> None:
    """Log `event` with structured `fields` (UIDs, AE titles, counts, durations)."""
    if logger.isEnabledFor(level):
        logger.log(
            level,
            message or event,
            exc_info=exc_info,
            extra={_EVENT_ATTR: event, _FIELDS_ATTR: fields},
        )


def _structured(record: logging.LogRecord) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "event": getattr(record, _EVENT_ATTR, "log"),
    }
    for key, value in getattr(record, _FIELDS_ATTR, {}).items():
        if not any(marker in key.lower() for marker in _PHI_MARKERS):
            payload[key] = value
    message = record.getMessage()
    if record.name.split(".", 1)[0] not in _OWN_LOGGERS:
        message = redact(message)
    if message != payload["event"]:
        payload["message"] = message
    if record.exc_info:
        # its own key: an event's one-line `error` field stays what the admin reads first
        payload["traceback"] = _redact_traceback(
            logging.Formatter().formatException(record.exc_info)
        )
    return payload


def redact(text: str) -> str:
    """`text` with the values in it replaced by <redacted>: every quoted substring that is not
    clearly a DICOM keyword, VR or tag, and unquoted person names (with `^`) and runs of six or
    more digits (dates, IDs). For free text the node did not write; names of attributes stay,
    and so do Python's own "'X' object has no attribute 'y'" messages, which name code."""

    def quoted(match: re.Match[str]) -> str:
        inner = match.group(2)
        if inner in _VRS or _TAG.match(inner) or _is_keyword(inner):
            return match.group(0)
        return f"{match.group(1)}{REDACTED}{match.group(1)}"

    def values(part: str) -> str:
        return _UNQUOTED_VALUE.sub(REDACTED, _QUOTED.sub(quoted, part))

    kept = [(m.start(), m.end()) for m in _PYTHON_MESSAGE.finditer(text)]
    bounds = [0, *(i for span in kept for i in span), len(text)]
    return "".join(text[a:b] if n % 2 else values(text[a:b])
                   for n, (a, b) in enumerate(pairwise(bounds)))


def _is_keyword(word: str) -> bool:
    from pydicom.datadict import tag_for_keyword

    return bool(word) and tag_for_keyword(word) is not None


def _redact_traceback(text: str) -> str:
    """Exception messages (the unindented lines) redacted; file names and code lines kept."""
    return "\n".join(
        line if line.startswith((" ", "Traceback")) else redact(line) for line in text.split("\n")
    )


def warning_fields(message: str, category: type[Warning], filename: str) -> dict[str, Any]:
    """A Python warning as log fields: category, module, the attributes it names and its
    redacted text."""
    fields: dict[str, Any] = {"category": category.__name__, "module": _module_name(filename)}
    attributes = sorted({w for w in _WORD.findall(message) if _is_keyword(w)})
    if attributes:
        fields["attributes"] = attributes
    fields["text"] = redact(message)
    return fields


def _module_name(filename: str) -> str:
    path = filename.replace("\\", "/")
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in path:
            path = path.rsplit(marker, 1)[1]
            break
    else:
        path = path.rsplit("/", 1)[-1]
    return path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """`warnings.showwarning` replacement: one structured, redacted line instead of raw stderr
    (none for a UID the node accepts on purpose: `is_accepted_uid_complaint`)."""
    if is_accepted_uid_complaint(str(message)):
        return
    log_event(logging.getLogger("py.warnings"), "python_warning", level=logging.WARNING,
              **warning_fields(str(message), category, filename))


def is_accepted_uid_complaint(message: str) -> bool:
    """True for pydicom's "Invalid value for VR UI" about a UID that storage.spool.is_valid_uid
    accepts (digits and dots, <= 64, components with leading zeros as real devices make them):
    the node takes those on purpose, and each instance would otherwise log ~15 such lines."""
    match = _UID_COMPLAINT.match(message)
    return match is not None and is_valid_uid(match.group(1))


class _AcceptedUidNoise(logging.Filter):
    """Drops pydicom's log line about an accepted UID (`is_accepted_uid_complaint`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not is_accepted_uid_complaint(str(record.msg))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_structured(record), default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = _structured(record)
        head = f"{payload.pop('ts')} {payload.pop('level'):<7} {payload.pop('event')}"
        payload.pop("logger")
        traceback = payload.pop("traceback", None)
        message = payload.pop("message", None)
        tail = " ".join(f"{k}={v}" for k, v in payload.items())
        line = " ".join(part for part in (head, tail, f"- {message}" if message else "") if part)
        return f"{line}\n{traceback}" if traceback else line


def configure_logging(settings: LoggingSettings, stream: TextIO | None = None) -> None:
    """Install one handler on the root logger with the configured format and level."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    level = settings.level.upper()
    root.setLevel(level)
    # pynetdicom's own INFO lines duplicate ours and are unstructured, and its DEBUG dumps can
    # show data set contents: warnings only, INFO when the node itself runs at DEBUG.
    logging.getLogger("pynetdicom").setLevel(logging.INFO if level == "DEBUG" else logging.WARNING)
    # Libraries whose INFO lines narrate each call (highdicom: a dozen per SR built) say
    # nothing an admin acts on: their warnings and errors still come through.
    for library in ("apscheduler", "alembic", "highdicom"):
        logging.getLogger(library).setLevel(logging.WARNING)
    quiet_peer_network_errors()
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(f, _AcceptedUidNoise) for f in pydicom_logger.filters):
        pydicom_logger.addFilter(_AcceptedUidNoise())
    # Third-party warnings (pydicom, highdicom) quote header values; log them redacted as JSON.
    warnings.showwarning = _show_warning


_PEER_NETWORK_NOISE = (
    "Connection closed before the entire PDU was received",
    "The received PDU is shorter than expected",
    "Non-conformant '",  # a UID with leading zeros: accepted on purpose (storage.spool)
    "Association request failed",  # the sender's delivery_failed / probe_failed say it in words
    "TCP Initialisation Error",
)


class _PeerNetworkNoise(logging.Filter):
    """Drops pynetdicom's unstructured lines (and tracebacks) for what the node reports itself:
    a peer that went away mid-PDU (`store_interrupted`), UIDs it accepts on purpose and a
    destination that cannot be reached (the sender's own events, in words)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], OSError):
            return False
        return not str(record.msg).startswith(_PEER_NETWORK_NOISE)


def quiet_peer_network_errors() -> None:
    """Install _PeerNetworkNoise on the pynetdicom loggers that emit those lines; idempotent."""
    for name in ("pynetdicom.dul", "pynetdicom.utils", "pynetdicom.transport", "pynetdicom.assoc"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _PeerNetworkNoise) for f in logger.filters):
            logger.addFilter(_PeerNetworkNoise())
