"""Shared CLI plumbing: the --config/--json options and progress bars (typer and rich), and
the typer-free part re-exported from dicom_node.cli.plain (errors, settings, work list, output)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from dicom_node.cli.plain import (
    CliError,
    console,
    err_console,
    open_worklist,
    print_json,
    print_table,
    read_worklist,
    settings_from,
    user_errors,
)

__all__ = [
    "CliError", "ConfigOption", "JsonOption", "console", "err_console", "open_worklist",
    "print_json", "print_table", "progress_bar", "progress_display", "read_worklist",
    "settings_from", "user_errors",
]

if TYPE_CHECKING:
    from rich.progress import Progress

ConfigOption = typer.Option(None, "--config", help="TOML file overriding the shipped defaults.")
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")


def progress_display() -> Progress:
    """rich's Progress with the CLI's columns, on stderr, gone when done; one task per bar."""
    from rich.progress import (  # only where a command shows a bar (start-up time)
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=err_console, transient=True)


@contextmanager
def progress_bar(
    description: str, total: int, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """A bar on stderr (stdout stays clean for --json); yields `advance(n)`."""
    if not enabled:
        yield lambda n: None
        return
    with progress_display() as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)
