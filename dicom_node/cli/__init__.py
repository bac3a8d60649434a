"""The one entry point, `dicom-node`. The commands are typer's (`typer_app`); `status` and
`studies list` written plainly are answered without loading typer (`quick`), which keeps
their start-up under 0.5 s (bench/startup.py)."""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    from dicom_node.cli.quick import run_plain

    if not run_plain(sys.argv[1:]):
        from dicom_node.cli.typer_app import app

        app()


def __getattr__(name: str) -> Any:
    # `from dicom_node.cli import app` (tests, typer's CliRunner) without typer for `main`
    if name == "app":
        from dicom_node.cli.typer_app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
