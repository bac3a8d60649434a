"""Shared CLI plumbing: the --config/--json options, one-line errors, table and JSON output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from dicom_node.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from storage.db import Database

ConfigOption = typer.Option(None, "--config", help="TOML file overriding the shipped defaults.")
JsonOption = typer.Option(False, "--json", help="Machine-readable output.")

console = Console()
err_console = Console(stderr=True)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected failures into a one-line reason and a non-zero exit, never a traceback."""
    try:
        yield
    except (CliError, ConfigError, FileNotFoundError, ValueError) as exc:
        # soft_wrap: the reason stays one line however narrow the terminal (or a pipe) is
        err_console.print(
            f"dicom-node: error: {exc}", highlight=False, markup=False, soft_wrap=True
        )
        raise typer.Exit(2) from None


def settings_from(config: Path | None) -> Settings:
    return load_settings(config)


def open_worklist(settings: Settings, read_only: bool = False) -> Database:
    """The node's work list for a command; `read_only`: no migration and nothing created (an
    empty in-memory work list where the node never ran). Raises CliError naming the database
    (password hidden) when it cannot be opened."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import (
        NoSchemaError,
        SchemaTooNewError,
        open_database,
        open_empty,
        open_read_only,
    )

    try:
        if read_only:
            return open_read_only(settings.database_url, settings.engine_options)
        return open_database(settings.database_url, options=settings.engine_options)
    except NoSchemaError:
        return open_empty()
    except SchemaTooNewError as exc:
        raise CliError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CliError(f"cannot open the database {safe_url(settings)}: {exc}") from None


def safe_url(settings: Settings) -> str:
    """The configured database URL with its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A titled table for people. At any width nothing is cut off: a value too long for its
    column (a 64-character UID at 80 columns) folds onto the next line instead of ending in an
    ellipsis, so it can still be read and copied; the title is a line of its own."""
    table = Table(title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(title, style="italic", highlight=False, markup=False, soft_wrap=True)
    console.print(table)


def progress_display() -> Progress:
    """rich's Progress with the CLI's columns, on stderr, gone when done; one task per bar."""
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
