"""The console's navigation: every page the console may have, in the order shown. An entry
appears only when the app has a GET route for its path, so a page module added later (e.g.
Thresholds, Workbench) shows up in the bar without touching the others."""

from __future__ import annotations

from dataclasses import dataclass


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


def visible(get_paths: set[str]) -> list[NavItem]:
    return [item for item in NAV if item.path in get_paths]
