"""Work list (filters, paging, search) and the Study page (thumbnails, scores, decisions,
deliveries; retry, reprocess, resend)."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from dicom_node import destinations, studies, thumbnails
from dicom_node.http.console.web import (
    AdminChange,
    Reader,
    Refused,
    actor,
    context,
    done,
    pager,
    render,
)
from dicom_node.users import SignedIn
from storage.outbound import OutboundError
from storage.states import StudyState

router = APIRouter()
PER_PAGE = 25


def _day(text: str, name: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Refused(f"{name} must be a date (YYYY-MM-DD), got {text[:20]!r}", 400) from None


@router.get("/studies", response_class=HTMLResponse)
def work_list(request: Request, who: Reader, state: str = "", day: str = "",
              day_from: str = "", day_to: str = "", finding: str = "", calling_ae: str = "",
              q: str = "", page: int = 1) -> HTMLResponse:
    ctx = context(request)
    if state and state.upper() not in {s.value for s in StudyState}:
        raise Refused(f"unknown state {state[:20]!r}", 400)
    start, end = (_day(day, "day"),) * 2 if day else (_day(day_from, "from"), _day(day_to, "to"))
    filters = studies.WorklistFilters(state=state, day_from=start, day_to=end, finding=finding,
                                      calling_ae=calling_ae, search=q)
    page = max(page, 1)
    rows, total = studies.find_studies(ctx.database, filters, page, PER_PAGE)
    kept = {"state": state, "day_from": start.isoformat() if start else "",
            "day_to": end.isoformat() if end else "", "finding": finding,
            "calling_ae": calling_ae, "q": q}
    return render(request, "studies.html", who, "studies", rows=rows, total=total,
                  filters=kept, states=[s.value for s in StudyState],
                  findings=studies.finding_labels(ctx.settings),
                  calling_aes=studies.calling_ae_titles(ctx.database),
                  **pager(page, total, PER_PAGE, kept))


@router.get("/studies/{uid}", response_class=HTMLResponse)
def study_page(request: Request, uid: str, who: Reader) -> HTMLResponse:
    ctx = context(request)
    found = studies.study_overview(ctx.database, ctx.settings.spool_path, uid)
    if found is None:
        raise Refused("no study with this Study Instance UID in the work list", 404)
    result = found["result"]
    scored = {i["sop_instance_uid"]: i for i in result["images"]} if result else {}
    heat_maps = thumbnails.heat_map_overlays(ctx.database, ctx.settings.outbox_path, uid)
    return render(request, "study.html", who, "studies", uid=uid, scored=scored,
                  heat_maps=heat_maps, heat_map_label=thumbnails.HEAT_MAP_LABEL,
                  destinations=[d.name for d in ctx.settings.destinations],
                  states_to_retry=("FAILED", "QUEUED"),
                  states_to_reprocess=("DONE", "SKIPPED", "FAILED"),
                  conversion=ctx.settings.model.dicom_conversion,
                  image_numbers={i.sop_instance_uid: n for n, i in enumerate(found["instances"], 1)},
                  **found)


@router.get("/studies/{uid}/images/{sop}.png")
def thumbnail(request: Request, uid: str, sop: str,
              who: Reader) -> Response:
    ctx = context(request)
    try:
        png = thumbnails.thumbnail_png(ctx.database, ctx.settings.spool_path, uid, sop,
                                       ctx.settings.model.dicom_conversion)
    except thumbnails.ImageUnavailable as exc:
        return Response(str(exc), status_code=404, media_type="text/plain")
    return Response(png, media_type="image/png")  # no-store like every page: patient data


@router.get("/studies/{uid}/heat-maps/{sop}.png")
def heat_map(request: Request, uid: str, sop: str, who: Reader,
             size: int = thumbnails.OVERLAY_SIZE) -> Response:
    ctx = context(request)
    try:
        png = thumbnails.heat_map_png(ctx.database, ctx.settings.outbox_path, uid, sop,
                                      min(max(size, 64), 1024))
    except thumbnails.ImageUnavailable as exc:
        return Response(str(exc), status_code=404, media_type="text/plain")
    return Response(png, media_type="image/png")


@router.post("/studies/{uid}/retry")
def retry(request: Request, uid: str, who: AdminChange) -> Response:
    return _requeue(request, uid, who, reprocess=False)


@router.post("/studies/{uid}/reprocess")
def reprocess(request: Request, uid: str, who: AdminChange) -> Response:
    return _requeue(request, uid, who, reprocess=True)


def _requeue(request: Request, uid: str, who: SignedIn, reprocess: bool) -> Response:
    ctx = context(request)
    (outcome,) = studies.requeue_studies(ctx.database, [uid], ctx.clock(), reprocess=reprocess,
                                         actor=actor(who))
    verb = "Reprocess" if reprocess else "Retry"
    notice = (f"{verb}: queued again (was {outcome.previous_state})." if outcome.error is None
              else f"{verb} refused: {outcome.error}")
    return done(request, who, notice, f"/studies/{uid}")


@router.post("/studies/{uid}/resend")
async def resend(request: Request, uid: str, who: AdminChange) -> Response:
    ctx = context(request)
    form = await request.form()
    names = [str(n) for n in form.getlist("destination") if n]
    try:
        queued = destinations.resend(ctx.settings, ctx.database, uid, ctx.clock(), names,
                                     actor=actor(who))
    except (destinations.UnknownDestination, OutboundError) as exc:
        return done(request, who, f"Resend refused: {exc}", f"/studies/{uid}")
    where = ", ".join(names) if names else "every destination"
    return done(request, who, f"Resend: {len(queued)} objects queued for {where}.",
                f"/studies/{uid}")
