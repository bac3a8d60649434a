"""`dicom-node destinations list|echo`: where results go and whether they get there."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer

from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    console,
    print_json,
    print_table,
    read_worklist,
    settings_from,
    user_errors,
)
from dicom_node.cli.typer_app import app

destinations_app = typer.Typer(help="Destinations (PACS) and their state.",
                               no_args_is_help=True)
app.add_typer(destinations_app, name="destinations")


@destinations_app.command("list")
def destinations_list(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Each destination: up, down or refusing (since when, why), last success, and its
    pending and dead deliveries."""
    from dicom_node import destinations  # pynetdicom and the database only when run
    from dicom_node.cli.report_commands import _time, print_notes

    with user_errors():
        settings = settings_from(config)
        with read_worklist(settings) as reader:
            rows = destinations.overview(settings, reader)
    if as_json:
        print_json([{k: _time(v) if isinstance(v, datetime) else v
                     for k, v in row.as_dict().items()} for row in rows])
        return
    now = datetime.now(UTC)
    print_table(
        "Destinations",
        ["name", "state", "since", "last success", "pending", "dead", "oldest pending"],
        [[r.name, r.state, _ago(r.since, now), _ago(r.last_success_at, now),
          r.pending, r.dead, _ago(r.oldest_pending_at, now)] for r in rows],
    )
    print_notes("Why not up", [(r.name, r.last_error) for r in rows if r.last_error], "")


@destinations_app.command("echo")
def destinations_echo(
    name: str = typer.Argument(..., help="A destination name (see `destinations list`)."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """C-ECHO a destination with the configured AE titles and timeouts; exit 1 when it is
    down or refuses."""
    from dicom_node import destinations
    from dicom_node.outcomes import Verdict

    with user_errors():
        outcome = destinations.echo(settings_from(config), name)
    ok = outcome.verdict is Verdict.OK
    if as_json:
        print_json({"destination": name, "ok": ok, "verdict": outcome.verdict.value,
                    "message": outcome.message})
    else:
        console.print(f"{name}: {'ok' if ok else outcome.verdict.value}: {outcome.message}",
                      highlight=False, markup=False)
    if not ok:
        raise typer.Exit(1)


def _ago(value: datetime | None, now: datetime) -> str:
    """'3s ago', '5m ago', '2h ago', '4d ago'; '' for None."""
    if value is None:
        return ""
    seconds = max((now - value).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"
