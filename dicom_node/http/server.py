"""The HTTP server component: uvicorn serving the app from a thread of `dicom-node serve`.

The socket is bound in `start()` (so a port in use fails start-up in one line naming
`http.port`) and handed to uvicorn; `stop()` asks uvicorn to exit, which lets requests in
flight finish (at most GRACE_SECONDS), and joins its thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import uvicorn

from dicom_node.logs import log_event
from dicom_node.settings import HttpSettings

LOG = logging.getLogger(__name__)
START_TIMEOUT_SECONDS = 10.0
GRACE_SECONDS = 5.0


class HttpStartError(RuntimeError):
    """The HTTP server could not start; the message names the setting to look at."""


class HttpServer:
    """A service component (`name`, `start`, `stop`) running `app` on [http] host:port."""

    name = "http"

    def __init__(self, settings: HttpSettings, app: Any) -> None:
        self.settings = settings
        self.app = app
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when `http.port = 0`), else the configured one."""
        if self._socket is None:
            return self.settings.port
        return int(self._socket.getsockname()[1])

    def start(self) -> None:
        """Bind, start uvicorn's thread and wait until it serves.

        Raises HttpStartError when the address cannot be bound or uvicorn does not start."""
        tls = _tls_files(self.settings)
        self._socket = _bind(self.settings.host, self.settings.port)
        config = uvicorn.Config(self.app, lifespan="off", access_log=False, log_config=None,
                                log_level="warning", timeout_graceful_shutdown=int(GRACE_SECONDS),
                                **tls)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]}, name="http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise HttpStartError(f"HTTP server on {self._where()} did not start")
            time.sleep(0.01)
        log_event(LOG, "http_listening", host=self.settings.host, port=self.port,
                  scheme="https" if tls else "http",
                  endpoints=["/healthz", "/readyz", "/metrics"]
                  + (["/ (console)"] if self.settings.console else []))
        if not tls and not _is_loopback(self.settings.host):
            log_event(LOG, "http_without_tls", level=logging.WARNING, host=self.settings.host,
                      hint="set http.tls_certfile and http.tls_keyfile, or serve through a "
                           "TLS proxy: console passwords and images travel in clear")

    def stop(self) -> None:
        """Stop serving; safe to call twice and after a failed start."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=GRACE_SECONDS + 5)
        if self._socket is not None:
            self._socket.close()
        was_running = self._server is not None and self._server.started
        self._server = self._thread = self._socket = None
        if was_running:
            log_event(LOG, "http_stopped")

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"


def _tls_files(settings: HttpSettings) -> dict[str, str]:
    """uvicorn's ssl_certfile/ssl_keyfile when TLS is configured; HttpStartError naming the
    key when a file is not readable."""
    if not settings.tls_certfile:
        return {}
    for key, path in (("http.tls_certfile", settings.tls_certfile),
                      ("http.tls_keyfile", settings.tls_keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise HttpStartError(f"cannot read {key} {path}: {exc.strerror or exc}") from None
    return {"ssl_certfile": settings.tls_certfile, "ssl_keyfile": settings.tls_keyfile}


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HttpStartError(
            f"cannot serve HTTP on {host}:{port} (http.host, http.port): {reason}"
        ) from None
