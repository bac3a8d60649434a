"""Sign-in and sign-out. The sign-in page says how the first admin is made when there is no
account yet; failed attempts are rate limited per user name and per client address."""

from __future__ import annotations

import logging
from datetime import timedelta

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from dicom_node import users
from dicom_node.http.console.web import (
    COOKIE,
    AnyChange,
    check_origin,
    context,
    render,
    safe_next,
)
from dicom_node.logs import log_event

LOG = logging.getLogger(__name__)
router = APIRouter()


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> Response:
    ctx = context(request)
    who = users.session_user(ctx.database, request.cookies.get(COOKIE), ctx.clock())
    if who is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login(request, next, error=None)


def _login(request: Request, next: str, error: str | None, username: str = "",
           status_code: int = 200) -> HTMLResponse:
    ctx = context(request)
    return render(request, "login.html", None, status_code=status_code, next=safe_next(next),
                  error=error, username=username, no_users=not users.has_users(ctx.database),
                  secure=ctx.secure_cookies)


@router.post("/login")
def login(request: Request, username: str = Form(""), password: str = Form(""),
          next: str = Form("/")) -> Response:
    check_origin(request)
    ctx = context(request)
    client = request.client.host if request.client else "?"
    wait = ctx.throttle.wait_seconds(username, client)
    if wait > 0:
        log_event(LOG, "console_login_throttled", level=logging.WARNING, user=username,
                  client=client)
        return _login(request, next, f"Too many failed sign-ins: try again in {wait:.0f} s.",
                      username, status_code=429)
    user = users.authenticate(ctx.database, username, password)
    if user is None:
        ctx.throttle.failed(username, client)
        log_event(LOG, "console_login_failed", level=logging.WARNING, user=username,
                  client=client)
        return _login(request, next, "User name or password is wrong.", username,
                      status_code=401)
    ctx.throttle.succeeded(username)
    hours = ctx.settings.http.session_hours
    token = users.start_session(ctx.database, user.username, ctx.clock(),
                                timedelta(hours=hours))
    log_event(LOG, "console_login", user=user.username, role=user.role, client=client)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(COOKIE, token, max_age=int(hours * 3600), httponly=True,
                        samesite="strict", secure=ctx.secure_cookies, path="/")
    return response


@router.post("/logout")
def logout(request: Request, who: AnyChange) -> Response:
    users.end_session(context(request).database, who.token_sha256)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
