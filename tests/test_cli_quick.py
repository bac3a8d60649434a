"""`dicom-node status` and `studies list`, answered without typer when written plainly
(dicom_node.cli.quick), behave exactly as typer's commands: the same options, defaults and
conversions, the same output, errors and exit statuses; anything not plain is typer's."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer.main

from dicom_node.cli import app, worklist_views
from dicom_node.cli.quick import COMMANDS, parse
from storage import worklist
from storage.db import open_database
from storage.ignored import IgnoredRecord, record_ignored
from tests.peers import REPO_ROOT, dicom_node_command

STUDY_UID = "1.2.3.11"  # short: whole in a column at 80 columns
TYPER_ONLY = [sys.executable, "-c", "from dicom_node.cli import app; app(prog_name='dicom-node')"]


def _typer_command(words: tuple[str, ...]):
    command = typer.main.get_command(app)
    for word in words:
        command = command.commands[word]  # type: ignore[attr-defined]
    return command


@pytest.mark.parametrize("words", list(COMMANDS), ids=" ".join)
def test_the_plain_options_are_typer_s_options(words):
    function, options = COMMANDS[words]
    command = _typer_command(words)
    assert {o for p in command.params for o in p.opts} == set(options)
    signature = inspect.signature(getattr(worklist_views, function))
    # typer's command passes its parameters on in order, so the names must line up too
    assert list(inspect.signature(command.callback).parameters) == list(signature.parameters)
    for param in command.params:
        (name,) = param.opts
        plain = options[name]
        assert (plain.parameter, plain.kind is bool) == (param.name, param.is_flag)
        assert not param.multiple and not param.secondary_opts and param.envvar is None
        if not param.is_flag:
            assert plain.kind is param.type_descriptor.annotation
        assert plain.minimum == param.type_descriptor.parameter_info.min
        assert signature.parameters[param.name].default == param.default


@pytest.mark.parametrize(("argv", "expected"), [
    (["status"], ("status", {})),
    (["status", "--json", "--check", "--config", "x.toml"],
     ("status", {"as_json": True, "check": True, "config": Path("x.toml")})),
    (["studies", "list", "--limit", "7", "--state", "done"],
     ("studies_list", {"limit": 7, "state": "done"})),
    # typer's: help, other spellings, unknown or repeated options, missing or odd values
    (["--help"], None), (["status", "--help"], None), (["studies", "list", "--help"], None),
    (["status", "--config=x.toml"], None), (["status", "--json", "--json"], None),
    (["status", "--no-check"], None), (["status", "extra"], None), (["status", "--config"], None),
    (["status", "--config", "--json"], None), (["status", "--config", ""], None),
    (["studies", "list", "--limit", "0"], None), (["studies", "list", "--limit", "x"], None),
    (["studies", "list", "--limit", "+5"], None), (["studies", "list", "--limit", "٣"], None),
    (["studies", "show", STUDY_UID], None), (["studies"], None), (["serve"], None), ([], None),
])
def test_which_command_lines_are_plain(argv, expected):
    assert parse(argv) == expected


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("quick")
    database = open_database(f"sqlite:///{tmp / 'data' / 'worklist.sqlite'}")
    now = datetime.now(UTC)
    with database.sessions.begin() as session:
        for n, view in enumerate(("PA", "LL")):
            worklist.record_instance(session, worklist.InstanceRecord(
                sop_instance_uid=f"{STUDY_UID}.{n}", series_instance_uid=f"{STUDY_UID}.9",
                study_instance_uid=STUDY_UID, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1", modality="DX",
                body_part_examined="CHEST", view_position=view,
                spool_path=f"{STUDY_UID}/{n}.dcm", size_bytes=1234, calling_ae_title="MOD1",
            ), now)
        record_ignored(session, IgnoredRecord("1.2.3.4", STUDY_UID, "1.2.840.10008.5.1.4.1.1.2",
                                              "MOD1"), now)
    database.dispose()
    path = tmp / "node.toml"
    path.write_text(f'[node]\ndata_dir = "{tmp / "data"}"\n'
                    '[[destinations]]\nname = "PACS"\nae_title = "PACS"\nhost = "127.0.0.1"\n'
                    'port = 4242\n')
    return path


def _run(command: list[str], argv: list[str]) -> tuple[int, str, str]:
    done = subprocess.run([*command, *argv], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT, env={**os.environ, "COLUMNS": "80"}, check=False)
    # the spool's free space may change between the two runs (other processes write)
    free = re.compile(r'(free |"free_bytes": )[\d,.]+')
    return done.returncode, free.sub(r"\1N", done.stdout), done.stderr


@pytest.mark.parametrize("argv", [
    ["status"], ["status", "--json"], ["status", "--check"], ["status", "--check", "--json"],
    ["studies", "list"], ["studies", "list", "--json", "--limit", "1"],
    ["studies", "list", "--state", "receiving"], ["studies", "list", "--state", "bogus"],
], ids=" ".join)
def test_plain_and_typer_answer_alike(config, argv):
    argv = [*argv, "--config", str(config)]
    assert parse(argv) is not None
    plain = _run(dicom_node_command(), argv)
    assert plain == _run(TYPER_ONLY, argv)
    assert STUDY_UID in plain[1] or "unknown state 'bogus'" in plain[2] or "--check" in argv


def test_python_dash_m_dicom_node_is_the_same_command_line(config):
    """For a host where the venv's bin/ is not on PATH: `python -m dicom_node` answers as
    `dicom-node` does, plain fast path included."""
    argv = ["studies", "list", "--config", str(config)]
    as_module = _run([sys.executable, "-m", "dicom_node"], argv)
    assert as_module == _run(dicom_node_command(), argv) and STUDY_UID in as_module[1]


def test_a_missing_config_file_is_the_same_one_line_error(tmp_path):
    argv = ["status", "--config", str(tmp_path / "nowhere.toml")]
    plain = _run(dicom_node_command(), argv)
    assert plain == _run(TYPER_ONLY, argv)
    assert plain[0] == 2 and plain[2].count("\n") == 1 and "nowhere.toml" in plain[2]


def test_plain_commands_load_neither_typer_nor_sqlalchemy(config):
    """What keeps their start-up under 0.5 s (bench/startup.py measures it)."""
    probe = ("import sys; from dicom_node.cli import main\n"
             f"sys.argv = ['dicom-node', 'status', '--config', {str(config)!r}]\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'typer', 'click', "
             "'pydantic', 'sqlalchemy', 'alembic', 'pydicom', 'numpy', 'torch'}), "
             "file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT, check=False)
    assert done.stderr.strip().splitlines()[-1] == "[]"
