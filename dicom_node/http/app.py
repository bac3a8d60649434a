"""The node's HTTP application (FastAPI): /healthz, /readyz and /metrics.

`create_app` takes the service's collaborators, never the service itself, so the app holds no
SQL and no state of its own; the admin console (dicom_node.http.console) adds its pages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dicom_node.http.readiness import Readiness

if TYPE_CHECKING:
    from dicom_node.http.console.web import ConsoleContext


def create_app(
    *,
    ae_title: str,
    readiness: Callable[[], Readiness],
    registry: CollectorRegistry,
    console: ConsoleContext | None = None,
) -> FastAPI:
    """The ASGI app. `readiness()` runs the checks for /readyz (200 ready, 503 not, with each
    check in the JSON body); `registry` is rendered by /metrics in Prometheus text format;
    `console`, when given, adds the signed-in admin console (dicom_node.http.console).
    No interactive docs: they load scripts from the internet, which a hospital node has not.
    /healthz, /readyz and /metrics stay open: they show no patient data."""
    app = FastAPI(title="dicom-node", docs_url=None, redoc_url=None, openapi_url=None)
    started = time.monotonic()

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness: the process answers HTTP. Checks nothing else, so it stays cheap."""
        return {"status": "alive", "ae_title": ae_title,
                "uptime_seconds": round(time.monotonic() - started, 3)}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        """Readiness: listener, database, model, disk; 503 names what is not ready."""
        report = readiness()
        return JSONResponse(report.as_json(), status_code=200 if report.ready else 503)

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    if console is not None:
        from dicom_node.http.console import install

        install(app, console)
    return app
