"""`dicom-node users add|passwd|remove|list`: console accounts, made on the node's host.

The first admin comes from here (`dicom-node users add NAME --role admin`): the console has no
sign-up page. Passwords are typed twice at a hidden prompt, or read from stdin (one line) with
--password-stdin for scripts; never from an argument (it would stay in the shell history).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import typer

from dicom_node.cli.common import (
    CliError,
    ConfigOption,
    JsonOption,
    console,
    open_worklist,
    print_json,
    print_table,
    settings_from,
    user_errors,
)
from dicom_node.cli.typer_app import app

users_app = typer.Typer(help="Console accounts (roles viewer and admin).", no_args_is_help=True)
app.add_typer(users_app, name="users")

PasswordStdinOption = typer.Option(
    False, "--password-stdin", help="Read the password from the first line of stdin.")


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password: use --password-stdin")
    return typer.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_app.command("add")
def users_add(
    username: str = typer.Argument(..., help="The sign-in name."),
    role: str = typer.Option("viewer", "--role", help="viewer (reads) or admin (changes)."),
    password_stdin: bool = PasswordStdinOption,
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Add a console account (the first one: --role admin)."""
    from dicom_node import users
    from dicom_node.audit import cli_actor

    with user_errors():
        users.check_username(username)
        password = _password(password_stdin)
        database = open_worklist(settings_from(config))
        try:
            info = users.add_user(database, username, password, role, cli_actor(),
                                  datetime.now(UTC))
        finally:
            database.dispose()
    if as_json:
        print_json({"username": info.username, "role": info.role})
    else:
        console.print(f"added {info.username} ({info.role})", highlight=False, markup=False)


@users_app.command("passwd")
def users_passwd(
    username: str = typer.Argument(..., help="The sign-in name."),
    password_stdin: bool = PasswordStdinOption,
    config: Path | None = ConfigOption,
) -> None:
    """Set a new password; the user's console sessions end."""
    from dicom_node import users
    from dicom_node.audit import cli_actor

    with user_errors():
        password = _password(password_stdin)
        database = open_worklist(settings_from(config))
        try:
            users.set_password(database, username, password, cli_actor(), datetime.now(UTC))
        finally:
            database.dispose()
    console.print(f"password of {username} changed; its sessions ended", highlight=False,
                  markup=False)


@users_app.command("remove")
def users_remove(
    username: str = typer.Argument(..., help="The sign-in name."),
    config: Path | None = ConfigOption,
) -> None:
    """Remove an account and end its sessions (not the last admin)."""
    from dicom_node import users
    from dicom_node.audit import cli_actor

    with user_errors():
        database = open_worklist(settings_from(config))
        try:
            users.remove_user(database, username, cli_actor(), datetime.now(UTC))
        finally:
            database.dispose()
    console.print(f"removed {username}", highlight=False, markup=False)


@users_app.command("list")
def users_list(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every account with its role and when its password was last set."""
    from dicom_node import users

    with user_errors():
        database = open_worklist(settings_from(config), read_only=True)
        try:
            found = users.list_users(database)
        finally:
            database.dispose()
    if as_json:
        print_json([{"username": u.username, "role": u.role,
                     "created_at": u.created_at.isoformat(timespec="seconds"),
                     "password_changed_at": u.password_changed_at.isoformat(timespec="seconds")}
                    for u in found])
        return
    print_table("Console accounts", ["user", "role", "created", "password set"],
                [[u.username, u.role, u.created_at.strftime("%Y-%m-%d %H:%M"),
                  u.password_changed_at.strftime("%Y-%m-%d %H:%M")] for u in found])
