"""HTTP inside `dicom-node serve`: health (/healthz, /readyz), Prometheus /metrics and the
signed-in admin console (pages at /, `[http] console`).

`attach(service)` adds the server to a `dicom_node.service.Service` when `[http] enabled`;
`app.create_app` builds the FastAPI app, `server.HttpServer` runs it with uvicorn in a thread.
"""

from __future__ import annotations

from typing import Any


def attach(service: Any) -> Any:
    """Add the HTTP server to `service` (before the components added after it, so it is up
    early in start-up and goes down late in shutdown). Returns the HttpServer, or None when
    `[http] enabled = false`. The model check reads the service's "worker" component at each
    request, so it may be attached before or after the worker."""
    from dicom_node.http.app import create_app
    from dicom_node.http.readiness import ReadinessProbe
    from dicom_node.http.server import HttpServer

    settings = service.settings
    if not settings.http.enabled:
        return None

    def model_state() -> Any:
        worker = next((c for c in service.components if c.name == "worker"), None)
        return None if worker is None else worker.model_state

    probe = ReadinessProbe(
        listener=service.listener, database=service.database, spool=service.spool,
        min_free_bytes=service.intake.min_free_bytes, model_state=model_state,
    )
    console = None
    if settings.http.console:
        from dicom_node.http.console import ConsoleContext

        console = ConsoleContext(settings=settings, database=service.database,
                                 readiness=probe.check)
    app = create_app(ae_title=settings.node.ae_title, readiness=probe.check,
                     registry=service.metrics.registry, console=console)
    server = HttpServer(settings.http, app)
    service.add(server)
    return server
