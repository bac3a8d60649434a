"""Thresholds: the active profile, its history (who, when, why, method), a diff of any two
versions, a threshold change previewed on recent work and the calibration set before it is
saved (note required; saving never activates), activation as its own step, and score drift
histograms. Handlers call dicom_node.thresholds, .drift and .findings only."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from dicom_node import drift, findings, thresholds
from dicom_node.charts import histogram_svg
from dicom_node.http.console.web import (
    AdminChange,
    Reader,
    actor,
    context,
    done,
    render,
)
from ml.catalogue import MAX_PROBABILITY, MIN_PROBABILITY, Catalogue
from storage.profiles import ProfileError

router = APIRouter()
RECENT = thresholds.DEFAULT_RECENT_STUDIES


def _catalogue(request: Request) -> Catalogue:
    ctx = context(request)
    return findings.node_catalogue(ctx.settings, ctx.database)


@router.get("/thresholds", response_class=HTMLResponse)
def thresholds_page(
    request: Request, who: Reader, a: int | None = None, b: int | None = None
) -> HTMLResponse:
    ctx = context(request)
    catalogue = _catalogue(request)
    found = thresholds.history(ctx.database, catalogue)
    active = next(v for v in found.versions if v.version == found.active_version)
    rows = [(f, active.thresholds.get(f.label, f.default_threshold)) for f in catalogue.findings]
    compared, diff_error = None, None
    if a is not None and b is not None:
        try:
            compared = thresholds.diff(ctx.database, catalogue, a, b)
        except ProfileError as exc:
            diff_error = str(exc)
    newest = found.versions[-1].version
    return render(
        request, "thresholds.html", who, "thresholds", history=found, active=active, rows=rows,
        events=list(reversed(found.events)), compared=compared, diff_error=diff_error,
        a=a if a is not None else max(newest - 1, 1), b=b if b is not None else newest,
        low=MIN_PROBABILITY, high=MAX_PROBABILITY, recent=RECENT,
    )


@router.get("/thresholds/preview", response_class=HTMLResponse)
def preview_page(
    request: Request, who: Reader, finding: str = "", value: str = "", last: int = RECENT
) -> HTMLResponse:
    ctx = context(request)
    catalogue = _catalogue(request)
    try:
        proposed = _number(value)
        shown = thresholds.preview(ctx.database, catalogue, finding, proposed, last=last)
    except (ProfileError, ValueError) as exc:
        return render(request, "threshold_preview.html", who, "thresholds", error=str(exc),
                      finding=finding, value=value, last=last, shown=None, chart=None)
    report = drift.drift(ctx.database, catalogue, last=last, findings=[shown.finding],
                         also_show=[proposed])
    return render(request, "threshold_preview.html", who, "thresholds", error=None,
                  finding=shown.finding, value=value, last=last, shown=shown,
                  chart=_chart(ctx.settings, report.findings[0], proposed))


@router.post("/thresholds/save")
def save(
    request: Request, who: AdminChange, finding: str = Form(""), value: str = Form(""),
    note: str = Form(""), last: int = Form(RECENT),
) -> Response:
    ctx = context(request)
    back = "/thresholds/preview?" + urlencode({"finding": finding, "value": value, "last": last})
    try:
        created, changes = thresholds.save_threshold(
            ctx.database, _catalogue(request), finding, _number(value), actor=actor(who),
            note=note)
    except (ProfileError, ValueError) as exc:
        return done(request, who, f"Not saved: {exc}", back)
    change = ", ".join(f"{c.finding} {c.before:.3f} -> {c.after:.3f}" for c in changes)
    return done(request, who, f"Saved v{created.version} ({change}). It is not active: "
                f"activate it in the history when you are ready.", "/thresholds#history")


@router.post("/thresholds/activate")
def activate(
    request: Request, who: AdminChange, version: int = Form(...), note: str = Form(""),
) -> Response:
    ctx = context(request)
    try:
        before, changed = thresholds.activate(ctx.database, _catalogue(request), version,
                                              actor=actor(who), note=note.strip() or None)
    except ProfileError as exc:
        return done(request, who, f"Not activated: {exc}", "/thresholds#history")
    notice = (f"v{version} is active (was v{before}); the node uses it from its next study."
              if changed else f"v{version} was already active; nothing changed.")
    return done(request, who, notice, "/thresholds")


@router.get("/thresholds/drift", response_class=HTMLResponse)
def drift_page(request: Request, who: Reader, last: int = RECENT) -> HTMLResponse:
    ctx = context(request)
    last = max(last, 1)
    report = drift.drift(ctx.database, _catalogue(request), last=last)
    charts = [(f, _chart(ctx.settings, f, None)) for f in report.findings]
    return render(request, "threshold_drift.html", who, "thresholds", report=report,
                  charts=charts, last=last)


def _chart(settings: Any, found: drift.FindingDrift, proposed: float | None) -> str:
    """A data: URI of the histogram SVG (the page's Content-Security-Policy allows data:
    images, and an image keeps matplotlib's inline styles out of the page)."""
    title = f"{found.finding}: recent studies vs calibration set"
    if proposed is not None:
        title = f"{found.finding}: threshold {found.threshold:.3f} -> {proposed:.3f}"
    svg = histogram_svg(
        title, found.edges,
        [("recent studies", found.recent), ("calibration, positive", found.calibration_positive),
         ("calibration, negative", found.calibration_negative)],
        threshold=proposed if proposed is not None else found.threshold,
        clinical_use=settings.model.clinical_use, footnote=settings.model.name,
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def _number(text: str) -> float:
    try:
        return float(text.strip())
    except (ValueError, AttributeError):
        raise ValueError(f"the threshold must be a number, got {text!r}") from None
