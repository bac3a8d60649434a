"""The node's HTTP application (FastAPI): /healthz, /readyz and /metrics.

`create_app` takes the service's collaborators, never the service itself, so the app holds no
SQL and no state of its own; the admin console (a later issue) adds its routers here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dicom_node.http.readiness import Readiness


def create_app(
    *,
    ae_title: str,
    readiness: Callable[[], Readiness],
    registry: CollectorRegistry,
) -> FastAPI:
    """The ASGI app. `readiness()` runs the checks for /readyz (200 ready, 503 not, with each
    check in the JSON body); `registry` is rendered by /metrics in Prometheus text format.
    No interactive docs: they load scripts from the internet, which a hospital node has not."""
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

    return app
