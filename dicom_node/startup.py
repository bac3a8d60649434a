"""Checks `serve` makes before it opens anything or starts a thread, each failing in one line:
the data directory is usable, the DICOM port can be bound, clinical use is allowed."""

from __future__ import annotations

import logging
import socket
import uuid
from pathlib import Path

from dicom_node.logs import log_event
from dicom_node.settings import ConfigError, Settings

LOG = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The node cannot start; the message is the one line to show."""


def check_data_dir(settings: Settings) -> Path:
    """Create node.data_dir if needed and prove it writable; its absolute path.

    Raises ConfigError naming node.data_dir (read-only, a path under a regular file, ...)."""
    path = settings.data_path
    probe = path / f".write-test-{uuid.uuid4().hex}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"config key node.data_dir = {str(path)!r} cannot be used: {reason}"
                          ) from None
    return path


def check_port(settings: Settings) -> None:
    """Bind node.host:node.port once (then release it for the listener) so that a port in use
    or not allowed fails now, before the model is loaded. Raises StartupError."""
    host, port = settings.node.host, settings.node.port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise StartupError(
                f"cannot listen on {host}:{port} (node.host, node.port): "
                f"{exc.strerror or exc}") from None


def check_clinical_use(settings: Settings) -> None:
    """With model.clinical_use = true: refuse the demo checkpoints and any checkpoint whose
    model card does not clear it; log the checkpoint hashes when allowed. Raises ConfigError."""
    from ml.model_card import clinical_use_refusal, file_sha256

    if not settings.model.clinical_use:
        return
    hashes = {}
    for configured in settings.model.checkpoints:
        path = settings.resolve(configured)
        try:
            sha256 = file_sha256(path)
        except OSError as exc:
            raise ConfigError(f"config key model.clinical_use = true: checkpoint {configured} "
                              f"cannot be read ({exc.strerror or exc})") from None
        refusal = clinical_use_refusal(path, sha256)
        if refusal:
            raise ConfigError(f"config key model.clinical_use = true refused: {configured} "
                              f"{refusal}")
        hashes[configured] = sha256
    if not hashes:
        raise ConfigError("config key model.clinical_use = true refused: no checkpoint configured")
    log_event(LOG, "clinical_use_enabled", level=logging.WARNING, model=settings.model.name,
              checkpoints_sha256=hashes, message="clinical use is ON for these checkpoints")


def log_clinical_use_off(settings: Settings) -> None:
    """With model.clinical_use = false, one clinical_use_off line quoting what each checkpoint's
    model card says (the demo model's: why it is not for clinical use). Logged once the node
    has started, so that a start-up that fails still says one line only."""
    from ml.model_card import card_statement

    if settings.model.clinical_use:
        return
    cards = {p: card_statement(settings.resolve(p)) for p in settings.model.checkpoints}
    log_event(LOG, "clinical_use_off", model=settings.model.name, cards=cards,
              message="NOT FOR CLINICAL USE: every result, SR and summary image says so")
