"""The service layer for the findings catalogue as the node uses it: the configured TOML file
(`[model] findings_file`) followed by the findings added from the prompt workbench (stored as
catalogue revisions, `storage.catalogue_revisions`), and the changes to those additions.

An added finding is disabled until someone enables it; enabling or disabling takes effect
when the worker next loads its model (the node's next start), because prompt embeddings are
computed once at load. Each change is a numbered revision with author and a required note, and
the catalogue's version hash (`Catalogue.version`, recorded with every result) changes with it.
Shared by the CLI (`dicom-node findings ...`) and the console; no SQL here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from dicom_node.audit import Actor, record
from dicom_node.settings import Settings
from ml.catalogue import Catalogue, CatalogueError, load_catalogue, parse_catalogue
from storage import catalogue_revisions
from storage.catalogue_revisions import Revision
from storage.db import Database

PRIVATE_SCHEME = "99DCMNODE"  # this product's private coding scheme (sr-coding.md section 1)
CODE_VALUE_MAX = 16  # Code Value is SH: at most 16 characters


@dataclass(frozen=True)
class NewFinding:
    """A finding to add. `code_scheme` PRIVATE_SCHEME makes a private code; `code_meaning`
    defaults to the label."""

    label: str
    positive_prompt: str
    negative_prompt: str
    code_value: str
    code_scheme: str
    code_meaning: str | None
    default_threshold: float

    def entry(self) -> dict[str, Any]:
        """The [[finding]] table (always disabled: enabling is a separate revision)."""
        return {
            "label": self.label.strip(),
            "positive_prompt": self.positive_prompt,
            "negative_prompt": self.negative_prompt,
            "code": {
                "value": self.code_value.strip(),
                "scheme": self.code_scheme.strip(),
                "meaning": (self.code_meaning or self.label).strip(),
            },
            "default_threshold": self.default_threshold,
            "enabled": False,
        }


def file_catalogue(settings: Settings) -> Catalogue:
    """The configured findings file alone. Raises CatalogueError naming entry and key."""
    return load_catalogue(settings.resolve(settings.model.findings_file))


def node_catalogue(settings: Settings, database: Database | None) -> Catalogue:
    """The catalogue the node scores with: the file's findings, then the added ones in
    revision order. With no database (or one the node never ran on) the file alone."""
    base = file_catalogue(settings)
    if database is None:
        return base
    with database.read_only() as session:
        stored = catalogue_revisions.revisions(session)
    return merge(base, stored)


def node_catalogue_from_url(settings: Settings) -> Catalogue:
    """`node_catalogue` for a process that holds no Database (the worker's model loader):
    opens the work list read-only, briefly."""
    from storage.db import NoSchemaError, open_read_only

    try:
        database = open_read_only(settings.database_url)
    except NoSchemaError:
        return file_catalogue(settings)
    try:
        return node_catalogue(settings, database)
    finally:
        database.dispose()


def merge(base: Catalogue, stored: list[Revision]) -> Catalogue:
    """`base` followed by the findings the revisions added, enabled as the last revision for
    each says. Raises CatalogueError for an added label that clashes with the file's."""
    added: dict[str, dict[str, Any]] = {}
    for revision in stored:
        if revision.action == "add" and revision.entry is not None:
            added[revision.label] = dict(revision.entry)
        elif revision.label in added:
            added[revision.label]["enabled"] = revision.action == "enable"
    if not added:
        return base
    extra = parse_catalogue({"finding": list(added.values())}, source="catalogue revisions")
    taken = {f.label.casefold() for f in base.findings}
    clash = [f.label for f in extra.findings if f.label.casefold() in taken]
    if clash:
        raise CatalogueError(
            f"{base.source}: finding {clash[0]!r} is also added by a catalogue revision; "
            "rename one of them"
        )
    revision = max(r.revision for r in stored)
    return Catalogue(
        findings=base.findings + extra.findings, source=f"{base.source} + revision {revision}"
    )


def add_finding(
    settings: Settings,
    database: Database,
    finding: NewFinding,
    *,
    actor: Actor,
    note: str,
    now: datetime,
    provenance: Mapping[str, Any] | None = None,
    author: str | None = None,
) -> tuple[Revision, Catalogue]:
    """Add `finding` (disabled) as a new catalogue revision by `actor`, audited
    ("catalogue.add"); returns it and the catalogue with it. Raises ValueError
    (CatalogueError) for a blank note, a label already in the catalogue, a code value over
    16 characters or a threshold that can never be crossed (the catalogue's own validation,
    message naming the key). `author` (default: the actor's name) is the revision's."""
    author, note = _required(author or actor.name, "author"), _required(note, "note")
    entry = finding.entry()
    if len(entry["code"]["value"]) > CODE_VALUE_MAX:
        raise CatalogueError(
            f"code value {entry['code']['value']!r} is longer than {CODE_VALUE_MAX} characters "
            "(DICOM Code Value, SH)"
        )
    with database.sessions.begin() as session:
        stored = catalogue_revisions.revisions(session)
        current = merge(file_catalogue(settings), stored)
        if any(f.label.casefold() == entry["label"].casefold() for f in current.findings):
            raise CatalogueError(f"the catalogue already has a finding {entry['label']!r}")
        merge(current, [_draft(entry)])  # validates the entry as the catalogue would
        revision = catalogue_revisions.add_revision(
            session, action="add", label=entry["label"], author=author, note=note, now=now,
            entry=entry, provenance=provenance,
        )
        record(session, actor, "catalogue.add", entry["label"], before=None,
               after={"revision": revision.revision, "entry": entry, "note": note}, now=now)
    return revision, merge(file_catalogue(settings), [*stored, revision])


def set_enabled(
    settings: Settings,
    database: Database,
    label: str,
    enabled: bool,
    *,
    actor: Actor,
    note: str,
    now: datetime,
    author: str | None = None,
) -> Revision:
    """Enable or disable a finding that was added by a revision (the file's findings are
    changed in the file), audited ("catalogue.enable" / "catalogue.disable"). Raises
    ValueError naming what is wrong. `author` (default: the actor's name) is the revision's."""
    author, note = _required(author or actor.name, "author"), _required(note, "note")
    with database.sessions.begin() as session:
        stored = catalogue_revisions.revisions(session)
        current = merge(file_catalogue(settings), stored)
        added = {r.label.casefold(): r.label for r in stored if r.action == "add"}
        name = added.get(label.strip().casefold())
        if name is None:
            known = ", ".join(added.values()) or "none"
            raise ValueError(
                f"{label!r} was not added from the workbench (added findings: {known}); "
                "findings of the catalogue file are changed in that file"
            )
        if current.by_label(name).enabled == enabled:
            raise ValueError(f"{name} is already {'enabled' if enabled else 'disabled'}")
        action = "enable" if enabled else "disable"
        revision = catalogue_revisions.add_revision(
            session, action=action, label=name, author=author, note=note, now=now,
        )
        record(session, actor, f"catalogue.{action}", name,
               before={"enabled": not enabled},
               after={"enabled": enabled, "revision": revision.revision, "note": note}, now=now)
        return revision


def history(database: Database) -> list[Revision]:
    """Every catalogue revision, oldest first."""
    with database.read_only() as session:
        return catalogue_revisions.revisions(session)


def _draft(entry: Mapping[str, Any]) -> Revision:
    return Revision(0, datetime.min, "", "", "add", str(entry["label"]), entry, {})


def _required(value: str | None, what: str) -> str:
    if value is None or not value.strip():
        raise ValueError(f"a catalogue change needs {'an' if what == 'author' else 'a'} {what}")
    return value.strip()
