"""Readiness of a running node (/readyz): each check says ok or not and why, in words.

A node is ready when its DICOM listener accepts associations, its database answers, its model
is loaded (when this process runs the inference worker) and the spool's disk is above the floor
below which C-STORE is refused. A node without a worker (`[worker] enabled = false`, workers
run elsewhere) is ready without a model: it can still receive everything sent to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicom_node.listener import Listener
    from dicom_node.worker import ModelState
    from storage.db import Database
    from storage.spool import Spool

MIB = 2**20


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Readiness:
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_json(self) -> dict[str, Any]:
        """{"status": "ready" | "not ready", "not_ready": [names], "checks": {name: {...}}}"""
        return {
            "status": "ready" if self.ready else "not ready",
            "not_ready": [check.name for check in self.checks if not check.ok],
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks},
        }


class ReadinessProbe:
    """Runs the checks on demand (each scrape of /readyz); a check that raises is not ok."""

    def __init__(
        self,
        *,
        listener: Listener,
        database: Database,
        spool: Spool,
        min_free_bytes: int,
        model_state: Callable[[], ModelState | None],
    ) -> None:
        self.listener = listener
        self.database = database
        self.spool = spool
        self.min_free_bytes = min_free_bytes
        self.model_state = model_state  # None: no worker in this process

    def check(self) -> Readiness:
        checks = (
            ("listener", self._listener),
            ("database", self._database),
            ("model", self._model),
            ("disk", self._disk),
        )
        return Readiness(tuple(_run(name, check) for name, check in checks))

    def _listener(self) -> tuple[bool, str]:
        node = self.listener.node
        where = f"{node.ae_title} on {node.host}:{self.listener.port}"
        if self.listener.serving:
            return True, f"accepting associations: {where}"
        return False, f"not accepting associations (starting or stopping): {where}"

    def _database(self) -> tuple[bool, str]:
        self.database.ping()
        return True, f"{self.database.dialect} answers"

    def _model(self) -> tuple[bool, str]:
        state = self.model_state()
        if state is None:
            return True, "no inference worker in this process ([worker] enabled = false)"
        if state.loaded:
            return True, f"loaded: {state.detail}"
        if state.state == "loading":
            return False, f"not loaded yet: {state.detail}"
        return False, f"{state.state}, retried: {state.detail}"  # missing | corrupt | failed

    def _disk(self) -> tuple[bool, str]:
        free = self.spool.free_bytes()
        words = f"{free // MIB} MiB free, floor {self.min_free_bytes // MIB} MiB"
        if free >= self.min_free_bytes:
            return True, words
        return False, f"{words} (node.min_free_disk_mb): C-STORE is refused"


def _run(name: str, check: Callable[[], tuple[bool, str]]) -> Check:
    try:
        ok, detail = check()
    except Exception as exc:  # noqa: BLE001  a failing check is an answer, not a server error
        first_line = (str(exc).splitlines() or [""])[0][:300]
        return Check(name, False, f"{type(exc).__name__}: {first_line}")
    return Check(name, ok, detail)
