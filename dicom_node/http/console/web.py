"""Console plumbing shared by every page: the context (collaborators), templates, sign-in and
role checks, CSRF, one-line notices after a change, security headers and error pages.

Sessions are server-side rows (dicom_node.users): the cookie holds a random 256-bit value
(HttpOnly, SameSite=Strict, Secure when the node serves HTTPS); each request reads the user and
role from the database, so signing out, `users remove` and `users passwd` end sessions at once.
Every change is a POST carrying the session's CSRF token in a hidden field; a POST whose Origin
header names another site is refused too (which also covers the sign-in form).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicom_node import users
from dicom_node.audit import Actor
from dicom_node.http.console import nav
from dicom_node.settings import Settings
from dicom_node.users import LoginThrottle, SignedIn
from storage.db import Database

HERE = Path(__file__).resolve().parent
COOKIE = "dicom_node_session"
templates = Jinja2Templates(directory=str(HERE / "templates"))


@dataclass
class ConsoleContext:
    """What the console pages need: the node's settings and work list, the /readyz checks
    (callable returning dicom_node.http.readiness.Readiness), and the login throttle."""

    settings: Settings
    database: Database
    readiness: Callable[[], Any]
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    checkpoint_hash_cache: dict[tuple[str, int, int], str] = field(default_factory=dict)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))

    @property
    def secure_cookies(self) -> bool:
        return bool(self.settings.http.tls_certfile)


class NotSignedIn(Exception):
    """No valid session: pages redirect to sign-in, changes are refused (403)."""


class Refused(Exception):
    """A request the user may not make (role, CSRF, origin); the message says why."""

    def __init__(self, message: str, status_code: int = 403) -> None:
        super().__init__(message)
        self.status_code = status_code


def context(request: Request) -> ConsoleContext:
    return request.app.state.console


def actor(who: SignedIn) -> Actor:
    return Actor(who.username, "console")


def signed_in(request: Request) -> SignedIn:
    """FastAPI dependency for every page: the signed-in user, else NotSignedIn."""
    ctx = context(request)
    who = users.session_user(ctx.database, request.cookies.get(COOKIE), ctx.clock())
    if who is None:
        raise NotSignedIn()
    return who


async def change_allowed(request: Request) -> SignedIn:
    """FastAPI dependency for every POST that changes something (any role: sign-out)."""
    who = signed_in(request)
    await check_form(request, who)
    return who


async def admin_change(request: Request) -> SignedIn:
    """FastAPI dependency for every admin change: session, same origin, CSRF token, admin."""
    who = await change_allowed(request)
    if not who.is_admin:
        raise Refused(f"{who.username} is a viewer: only an admin can change this")
    return who


async def check_form(request: Request, who: SignedIn) -> None:
    check_origin(request)
    form = await request.form()
    token = str(form.get("csrf_token") or "")
    if not token or not secrets.compare_digest(token, who.csrf_token):
        raise Refused("the form's security token is missing or out of date: reload the page "
                      "and try again")


def check_origin(request: Request) -> None:
    """A POST whose Origin is another host:port than the one it was sent to (or "null", a
    sandboxed or privacy-stripped sender) is refused. A reverse proxy must pass Host on."""
    origin = request.headers.get("origin")
    if origin and (origin == "null" or urlsplit(origin).netloc != request.headers.get("host")):
        raise Refused("a request from another site was refused")


def render(request: Request, template: str, who: SignedIn | None, section: str = "",
           status_code: int = 200, **values: Any) -> HTMLResponse:
    """A page with the frame (navigation, user, notice, the model's caveat)."""
    ctx = context(request)
    notice = users.pop_notice(ctx.database, who) if who is not None else None
    model = ctx.settings.model
    return templates.TemplateResponse(request, template, status_code=status_code, context={
        "who": who, "section": section, "notice": notice,
        "csrf_token": who.csrf_token if who else "",
        "nav": nav.visible(request.app), "ae_title": ctx.settings.node.ae_title,
        "clinical_use": model.clinical_use, "caveat": model.caveat, **values})


def done(request: Request, who: SignedIn, notice: str, to: str) -> RedirectResponse:
    """After a change: remember the outcome for the next page and go there (303)."""
    users.set_notice(context(request).database, who, notice)
    return RedirectResponse(to, status_code=303)


def safe_next(target: str | None) -> str:
    """A local path to return to after sign-in (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _not_signed_in(request: Request, exc: NotSignedIn) -> Response:
    if request.method in ("GET", "HEAD"):
        wanted = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={quote(wanted, safe='')}", status_code=303)
    return _error(request, None, "Sign in first: this change needs a signed-in admin.", 403)


def _refused(request: Request, exc: Refused) -> Response:
    ctx = context(request)
    who = users.session_user(ctx.database, request.cookies.get(COOKIE), ctx.clock())
    return _error(request, who, str(exc), exc.status_code)


def _error(request: Request, who: SignedIn | None, message: str, code: int) -> HTMLResponse:
    return render(request, "error.html", who, status_code=code, message=message,
                  code=code)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """Framework errors (unknown path, wrong method) as a page, not JSON."""
    from fastapi.exception_handlers import http_exception_handler

    if request.url.path in ("/healthz", "/readyz", "/metrics"):
        return await http_exception_handler(request, exc)
    ctx = context(request)
    who = users.session_user(ctx.database, request.cookies.get(COOKIE), ctx.clock())
    words = {404: "There is no such page.", 405: "This page does not take that request."}
    return _error(request, who, words.get(exc.status_code, str(exc.detail)), exc.status_code)


def _invalid(request: Request, exc: RequestValidationError) -> Response:
    """A query or form value of the wrong type (page=abc): 400 naming it."""
    ctx = context(request)
    who = users.session_user(ctx.database, request.cookies.get(COOKIE), ctx.clock())
    names = ", ".join(str(e.get("loc", ["?"])[-1]) for e in exc.errors()) or "a value"
    return _error(request, who, f"This request has a value of the wrong kind: {names}.", 400)


SECURITY_HEADERS = {
    # no scripts or styles from anywhere else, no framing (clickjacking), no referrer to other
    # sites (study UIDs are in console URLs), no caching of pages with patient data
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on POSTs
    "Referrer-Policy": "same-origin",
}


# The page modules (each has `router`); a new page adds its module name here.
PAGE_MODULES = ("pages_auth", "pages_overview", "pages_studies", "pages_thresholds",
                "pages_workbench", "pages_destinations", "pages_audit")


def install(app: FastAPI, ctx: ConsoleContext) -> None:
    """Add the console to `app`: pages, /static, error pages and security headers."""
    import importlib

    app.state.console = ctx
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for name in PAGE_MODULES:
        app.include_router(importlib.import_module(f"dicom_node.http.console.{name}").router)
    app.add_exception_handler(NotSignedIn, _not_signed_in)
    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        if request.url.path in ("/healthz", "/readyz", "/metrics"):
            return response
        response.headers.update(SECURITY_HEADERS)
        if not request.url.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"
        return response


def pager(page: int, total: int, per_page: int, query: dict[str, Any]) -> dict[str, Any]:
    """Template values for pager.html: page, pages, and query_for(n) keeping the filters."""
    from urllib.parse import urlencode

    pages = max((total + per_page - 1) // per_page, 1)
    kept = {k: v for k, v in query.items() if v not in (None, "")}
    return {"page": page, "pages": pages,
            "query_for": lambda n: urlencode(kept | {"page": n})}


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _ago(value: datetime | None) -> str:
    from dicom_node.health import age_text

    if value is None:
        return "never"
    return f"{age_text(max((datetime.now(UTC) - value).total_seconds(), 0))} ago"


def _compact(value: Any) -> str:
    """A JSON value on one line for people: {"state": "FAILED"} -> state: FAILED."""
    import json

    if value is None:
        return ""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_compact(v) if isinstance(v, (dict, list)) else v}"
                         for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return json.dumps(value) if not isinstance(value, str) else value


def _mib(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def _age(seconds: float | None) -> str:
    from dicom_node.health import age_text

    return "" if seconds is None else age_text(seconds)


templates.env.filters.update(when=_when, ago=_ago, age=_age, compact=_compact, size=_mib)


# What a handler asks for (FastAPI dependencies): any signed-in user, or an allowed change.
Reader = Annotated[SignedIn, Depends(signed_in)]
AnyChange = Annotated[SignedIn, Depends(change_allowed)]
AdminChange = Annotated[SignedIn, Depends(admin_change)]
