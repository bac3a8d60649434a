"""The CLI's plumbing that needs no typer: one-line errors, the settings, the work list, table
and JSON output. The commands answered without typer (dicom_node.cli.quick) use only this;
dicom_node.cli.common adds typer's shared options for the others."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from dicom_node.settings import ConfigError, Settings, load_settings

if TYPE_CHECKING:
    from storage.db import Database
    from storage.reader import WorkListReader

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
        raise SystemExit(2) from None


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
    from storage.reader import display_url, error_text

    try:
        if read_only:
            return open_read_only(settings.database_url, settings.engine_options)
        return open_database(settings.database_url, options=settings.engine_options)
    except NoSchemaError:
        return open_empty()
    except SchemaTooNewError as exc:
        raise CliError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CliError(f"cannot open the database {display_url(settings.database_url)}: "
                       f"{error_text(exc)}") from None


@contextmanager
def read_worklist(settings: Settings) -> Iterator[WorkListReader]:
    """The work list's report queries for a read-only command (storage.reader: no migration,
    nothing created, one snapshot; on a SQLite file without importing SQLAlchemy). Raises
    CliError naming the database (password hidden) when it cannot be read."""
    from storage.reader import ReadError, display_url, open_reader

    try:
        with open_reader(settings.database_url) as reader:
            yield reader
    except ReadError as exc:
        raise CliError(f"cannot open the database {display_url(settings.database_url)}: {exc}"
                       ) from None


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
