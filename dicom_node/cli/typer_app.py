"""The typer application: every command, its options and help texts. Each command group lives
in its own module and registers itself here; shared options and error handling are in
`common`."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="dicom-node",
    help="DICOM node beside the PACS: intake, zero-shot chest X-ray findings, SR back to the PACS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Imported here so that each module can `from dicom_node.cli.typer_app import app`.
    from dicom_node.cli import (
        db_commands,  # noqa: F401  db
        destination_commands,  # noqa: F401  destinations
        finding_commands,  # noqa: F401  findings
        node_commands,  # noqa: F401  serve, status, studies
        predict_commands,  # noqa: F401  predict
        purge_commands,  # noqa: F401  purge
        report_commands,  # noqa: F401  worker, outbound
        threshold_commands,  # noqa: F401  thresholds, evaluate
        train_commands,  # noqa: F401  synth, train
        user_commands,  # noqa: F401  users
    )


_register()
