"""The console's navigation: every page the console may have, in the order shown. An entry
appears only when the app has a GET route for its path, so a page module added later (e.g.
Thresholds, Workbench) shows up in the bar without touching the others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NavItem:
    label: str
    path: str
    section: str  # the `section` a page passes to the template to mark itself current


NAV: tuple[NavItem, ...] = (
    NavItem("Overview", "/", "overview"),
    NavItem("Work list", "/studies", "studies"),
    NavItem("Thresholds", "/thresholds", "thresholds"),
    NavItem("Workbench", "/workbench", "workbench"),
    NavItem("Destinations", "/destinations", "destinations"),
    NavItem("Audit", "/audit", "audit"),
)


def visible(app: Any) -> list[NavItem]:
    """The entries whose path `app` answers with a GET route (computed once per app)."""
    cached = getattr(app.state, "console_nav", None)
    if cached is None:
        cached = app.state.console_nav = [item for item in NAV if _has_get(app, item.path)]
    return cached


def _has_get(app: Any, path: str) -> bool:
    from starlette.routing import Match

    scope = {"type": "http", "path": path, "method": "GET", "root_path": "", "headers": [],
             "query_string": b""}
    return any(route.matches(scope)[0] == Match.FULL for route in app.router.routes)
