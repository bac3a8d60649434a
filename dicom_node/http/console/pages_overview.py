"""Overview: who the node is, whether it is ready, what it did today and this week, its disk,
and the latest arrivals and failures."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from dicom_node import node_status
from dicom_node.http.console.web import (
    Reader,
    context,
    render,
)

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, who: Reader) -> HTMLResponse:
    ctx = context(request)
    now = ctx.clock()
    report = node_status.current_report(ctx.settings, now)
    activity = node_status.activity(ctx.database, now)
    spool = report["spool"]
    total = spool["free_bytes"] + spool["used_bytes"]
    return render(
        request, "overview.html", who, "overview", report=report, activity=activity,
        readiness=ctx.readiness(), http=ctx.settings.http,
        hashes=node_status.checkpoint_hashes(ctx.settings, ctx.checkpoint_hash_cache),
        disk_used_share=spool["used_bytes"] / total if total else 0,
        states=list(report["states"]),
    )
