"""`dicom-node purge [--dry-run]`: the retention rules on demand (what the node's hourly job
does): files of studies delivered `[retention] delivered_days` ago, rows of those delivered
`worklist_days` ago."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.table import Table

from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    open_worklist,
    print_json,
    settings_from,
    user_errors,
)
from dicom_node.cli.typer_app import app


@app.command()
def purge(
    config: Path | None = ConfigOption,
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; change nothing."),
    as_json: bool = JsonOption,
) -> None:
    """Delete the files (received images, SR, summary) of studies delivered to every
    destination `delivered_days` ago, and the rows of those delivered `worklist_days` ago.
    Undelivered work (not finished, FAILED, PENDING or DEAD deliveries) is never touched."""
    from dicom_node.retention import Retention

    with user_errors():
        settings = settings_from(config)
        database = open_worklist(settings)
        try:
            report = Retention.for_settings(settings, database, lambda: datetime.now(UTC)).run(
                dry_run=dry_run)
        finally:
            database.dispose()
    if as_json:
        print_json({"dry_run": report.dry_run, "studies_purged": report.studies_purged,
                    "rows_deleted": report.rows_deleted, "files": report.files,
                    "bytes": report.size_bytes, "ignored_rows_deleted": report.ignored_rows,
                    "studies": [dataclasses.asdict(i) for i in report.items]})
        return
    verb = "would go" if dry_run else "went"
    table = Table(title=f"Purge{' (dry run: nothing changed)' if dry_run else ''}",
                  title_justify="left")
    table.add_column("study", overflow="fold")  # a UID is only useful whole
    for column in ("state", "delivered", "removes", "bytes"):
        table.add_column(column, no_wrap=True)
    for i in report.items:
        table.add_row(i.study_instance_uid, i.state, _when(i.delivered_at),
                      f"{i.files} files" if i.action == "files" else "rows", _size(i.size_bytes))
    console.print(table)
    console.print(
        f"{report.studies_purged} studies' files ({report.files} files, "
        f"{_size(report.size_bytes)}) and {report.rows_deleted} studies' rows {verb}",
        highlight=False, soft_wrap=True,
    )


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value else ""


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
