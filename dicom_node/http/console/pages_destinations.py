"""Destinations: state, last success, pending and dead counts; Test (C-ECHO) and retry dead."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from dicom_node import destinations
from dicom_node.http.console.web import (
    AdminChange,
    Reader,
    Refused,
    actor,
    context,
    done,
    render,
)
from dicom_node.logs import log_event
from storage.outbound import OutboundError

LOG = logging.getLogger(__name__)
router = APIRouter()


@router.get("/destinations", response_class=HTMLResponse)
def destinations_page(request: Request, who: Reader) -> HTMLResponse:
    ctx = context(request)
    rows = destinations.overview_of(ctx.settings, ctx.database)
    return render(request, "destinations.html", who, "destinations", rows=rows)


@router.post("/destinations/{name}/echo")
def echo(request: Request, name: str, who: AdminChange) -> Response:
    """C-ECHO changes nothing, but it opens an association from the node: admins only."""
    ctx = context(request)
    try:
        outcome = destinations.echo(ctx.settings, name)
    except destinations.UnknownDestination as exc:
        raise Refused(str(exc), 404) from None
    log_event(LOG, "console_echo", destination=name, user=who.username,
              verdict=outcome.verdict.value)
    ok = outcome.verdict.value == "ok"
    verdict = "answered" if ok else f"failed ({outcome.verdict.value})"
    return done(request, who, f"Test of {name} {verdict}: {outcome.message}", "/destinations")


@router.post("/destinations/{name}/retry-dead")
def retry_dead(request: Request, name: str, who: AdminChange) -> Response:
    ctx = context(request)
    try:
        retried = destinations.retry_deliveries(ctx.settings, ctx.database, ctx.clock(),
                                                actor=actor(who), all_dead=True,
                                                destination=name)
    except destinations.UnknownDestination as exc:
        raise Refused(str(exc), 404) from None
    except OutboundError as exc:
        return done(request, who, f"Retry refused: {exc}", "/destinations")
    notice = (f"{len(retried)} dead deliveries to {name} queued again." if retried
              else f"{name} has no dead delivery.")
    return done(request, who, notice, "/destinations")
