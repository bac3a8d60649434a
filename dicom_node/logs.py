"""Structured logging: one JSON object per line (default) or `key=value` text.

Use `log_event(logger, "instance_stored", sop_instance_uid=..., calling_ae=...)`. Fields carry
UIDs, AE titles and peer addresses; never patient names or IDs. As a safety net the formatter
drops any field whose name says it is a patient identifier.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from dicom_node.settings import LoggingSettings

_FIELDS_ATTR = "dicom_node_fields"
_EVENT_ATTR = "dicom_node_event"
_PHI_MARKERS = ("patient", "birth", "accession", "physician", "operator", "institution")


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
    if message != payload["event"]:
        payload["message"] = message
    if record.exc_info:
        payload["error"] = logging.Formatter().formatException(record.exc_info)
    return payload


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_structured(record), default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = _structured(record)
        head = f"{payload.pop('ts')} {payload.pop('level'):<7} {payload.pop('event')}"
        payload.pop("logger")
        error = payload.pop("error", None)
        message = payload.pop("message", None)
        tail = " ".join(f"{k}={v}" for k, v in payload.items())
        line = " ".join(part for part in (head, tail, f"- {message}" if message else "") if part)
        return f"{line}\n{error}" if error else line


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
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
