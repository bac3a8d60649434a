"""The Audit page: every change from the console or the CLI, newest first, paged."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dicom_node import audit
from dicom_node.http.console.web import (
    Reader,
    context,
    pager,
    render,
)

router = APIRouter()
PER_PAGE = 50
KINDS = (("study.", "studies (retry, reprocess, resend)"),
         ("outbound.", "deliveries (retry)"), ("thresholds.", "thresholds"),
         ("catalogue.", "findings catalogue"), ("user.", "accounts"))


@router.get("/audit", response_class=HTMLResponse)
def audit_page(request: Request, who: Reader, kind: str = "", page: int = 1) -> HTMLResponse:
    prefix = kind if kind in {k for k, _ in KINDS} else ""
    page = max(page, 1)
    entries, total = audit.recent(context(request).database, PER_PAGE, (page - 1) * PER_PAGE,
                                  prefix or None)
    return render(request, "audit.html", who, "audit", entries=entries, total=total,
                  kinds=KINDS, kind=prefix, **pager(page, total, PER_PAGE, {"kind": prefix}))
