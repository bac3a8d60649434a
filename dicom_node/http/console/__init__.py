"""The admin console: server-rendered pages (Jinja2) on the node's HTTP app, signed in.

`install(app, context)` adds the pages, the static files, the security headers and the error
pages. Each page module (pages_*.py, listed in web.PAGE_MODULES) holds a FastAPI router whose
handlers call the service layer only (dicom_node.node_status, .studies, .destinations, .users,
.audit): no SQL here (tests/test_layering.py checks).

Adding a page (e.g. Thresholds at /thresholds, Workbench at /workbench):
- a module `pages_<name>.py` with `router = APIRouter()`, added to web.PAGE_MODULES; nav.NAV
  already lists both paths and shows each once a GET route answers it;
- GET handlers take `who: Reader` and return `render(request, "<name>.html", who, "<section>",
  **values)`; templates extend "base.html" (block content) and use the filters when, ago,
  age, compact, size;
- changes are POST forms with `<input type="hidden" name="csrf_token" value="{{ csrf_token }}">`,
  handlers take `who: AdminChange`, call a service with `actor(who)` (which writes the audit
  row in the change's transaction) and end with `done(request, who, "<outcome>", "<page>")`;
- refusals raise `Refused(message, status)`; scripts and styles only from /static (the CSP
  forbids inline ones; vendor a library's file into static/).
"""

from __future__ import annotations

from dicom_node.http.console.web import ConsoleContext, install

__all__ = ["ConsoleContext", "install"]
