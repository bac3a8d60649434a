"""`dicom-node db upgrade|current`: the work-list schema (Alembic migrations)."""

from __future__ import annotations

from pathlib import Path

import typer

from dicom_node.cli.common import (
    CliError,
    ConfigOption,
    JsonOption,
    console,
    print_json,
    settings_from,
    user_errors,
)
from dicom_node.cli.typer_app import app
from dicom_node.cli.worklist_views import safe_url

db_app = typer.Typer(help="The work-list database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Migrate the work list to this version's schema (also done at `serve` and `worker`
    start). On PostgreSQL several hosts may run it together: one migrates, the others wait."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import SchemaTooNewError, migrate
    from storage.reader import error_text

    with user_errors():
        settings = settings_from(config)
        try:
            applied, current = migrate(settings.database_url, settings.engine_options)
        except SchemaTooNewError as exc:
            raise CliError(str(exc)) from None
        except SQLAlchemyError as exc:
            raise CliError(f"cannot open the database {safe_url(settings)}: {error_text(exc)}"
                           ) from None
        if as_json:
            print_json({"applied": applied, "revision": current})
            return
        done = f"applied {', '.join(applied)}" if applied else "nothing to apply"
        console.print(f"work list at schema revision {current} ({done})",
                      highlight=False, markup=False, soft_wrap=True)
