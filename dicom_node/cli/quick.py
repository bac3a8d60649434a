"""`dicom-node status` and `dicom-node studies list` in their plain forms, answered without
typer: importing typer and building its pydantic adapters costs about 0.2 s of the 0.5 s these
commands may take to start (issue 12). Every other command line stays typer's.

A command line is plain when it is one of COMMANDS followed only by that command's options,
each at most once, as `--name value` or a bare flag, with a value that converts as typer would
convert it. Anything else (`--help`, `--name=value`, an unknown, repeated or misplaced option, a
missing, empty or invalid value) goes to typer, so help texts and usage errors stay typer's
own. Both paths call the same functions (dicom_node.cli.worklist_views). tests/test_cli_quick.py
holds COMMANDS to typer's definitions of these commands and both paths' output to each other.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PlainOption:
    parameter: str  # of the command's function
    kind: type  # bool: a flag; str, int or Path: one value
    minimum: int | None = None


CONFIG = PlainOption("config", Path)
JSON = PlainOption("as_json", bool)

# command words -> (function in dicom_node.cli.worklist_views, {option: PlainOption})
COMMANDS: dict[tuple[str, ...], tuple[str, dict[str, PlainOption]]] = {
    ("status",): ("status", {"--config": CONFIG, "--json": JSON,
                             "--check": PlainOption("check", bool)}),
    ("studies", "list"): ("studies_list", {
        "--config": CONFIG, "--state": PlainOption("state", str),
        "--limit": PlainOption("limit", int, minimum=1), "--json": JSON}),
}


def run_plain(argv: Sequence[str]) -> bool:
    """Run `argv` (the arguments after `dicom-node`) if it is a plain command line; False
    (nothing done) otherwise. Exits as typer would: SystemExit with the command's status, 1
    when stdout is a closed pipe, 130 on Ctrl-C."""
    parsed = parse(argv)
    if parsed is None:
        return False
    from dicom_node.cli import worklist_views

    function: Callable[..., None] = getattr(worklist_views, parsed[0])
    try:
        function(**parsed[1])
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except BrokenPipeError:  # `dicom-node studies list | head`: quiet, as click is
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    return True


def parse(argv: Sequence[str]) -> tuple[str, dict[str, Any]] | None:
    """(function name, keyword arguments) for a plain command line, else None."""
    for words, (function, options) in COMMANDS.items():
        if tuple(argv[: len(words)]) == words:
            arguments = _arguments(argv[len(words):], options)
            return None if arguments is None else (function, arguments)
    return None


def _arguments(tokens: Sequence[str], options: dict[str, PlainOption]) -> dict[str, Any] | None:
    arguments: dict[str, Any] = {}
    position = 0
    while position < len(tokens):
        option = options.get(tokens[position])
        if option is None or option.parameter in arguments:
            return None
        if option.kind is bool:
            arguments[option.parameter] = True
            position += 1
            continue
        if position + 1 == len(tokens):
            return None
        value = _value(tokens[position + 1], option)
        if value is None:
            return None
        arguments[option.parameter] = value
        position += 2
    return arguments


def _value(text: str, option: PlainOption) -> Any:
    """`text` converted for `option`; None where typer's reading might differ or it refuses."""
    if not text or text.startswith("-"):
        return None
    if option.kind is int:
        if not (text.isascii() and text.isdigit()):
            return None
        number = int(text)
        return None if option.minimum is not None and number < option.minimum else number
    return option.kind(text)
