"""The admin console: server-rendered pages (Jinja2) on the node's HTTP app, signed in.

`install(app, context)` adds the pages, the static files, the security headers and the error
pages. Each page module (pages_*.py) holds a FastAPI router whose handlers call the service
layer only (dicom_node.node_status, .studies, .destinations, .users, .audit): no SQL here.
Another page module adds itself with `app.include_router(router)` and `nav.NAV` shows it
(Thresholds, Workbench) as soon as its path has a route.
"""

from __future__ import annotations

from dicom_node.http.console.web import ConsoleContext, install

__all__ = ["ConsoleContext", "install"]
