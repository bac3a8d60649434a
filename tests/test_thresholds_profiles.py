"""Threshold profiles through the CLI: versions are never edited, exactly one is active, history
and diff say who changed what, and a running node's next lookup sees a new activation."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import DatabaseError
from typer.testing import CliRunner

from dicom_node.cli import app
from storage import profiles
from storage.db import Database
from tests.conftest import BOTH_BACKENDS

pytestmark = BOTH_BACKENDS


@pytest.fixture
def node_config(tmp_path: Path, database: Database) -> Path:
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\n'
                      f'[database]\nurl = "{database.url}"\n')
    return config


def cli(config: Path, *args: str, expect: int = 0) -> str:
    result = CliRunner().invoke(app, [*args, "--config", str(config)])
    assert result.exit_code == expect, result.output
    return result.output


def cli_json(config: Path, *args: str) -> dict:
    return json.loads(cli(config, *args, "--json"))


def test_first_profile_is_the_catalogue_defaults_by_system(node_config: Path) -> None:
    shown = cli_json(node_config, "thresholds", "show")
    assert shown["version"] == 1 and shown["active_version"] == 1
    assert shown["author"] == "system" and shown["method"] == "defaults"
    assert shown["thresholds"]["Pneumothorax"] == 0.5


def test_set_creates_a_new_version_and_never_edits_the_old_one(node_config: Path) -> None:
    made = cli_json(
        node_config,
        "thresholds",
        "set",
        "pneumothorax",
        "0.55",
        "--note",
        "too many false alarms",
        "--author",
        "alice",
    )
    assert made["version"] == 2 and made["based_on_version"] == 1 and made["activated"]
    assert made["changes"] == [{"finding": "Pneumothorax", "before": 0.5, "after": 0.55}]
    assert cli_json(node_config, "thresholds", "show", "1")["thresholds"]["Pneumothorax"] == 0.5
    active = cli_json(node_config, "thresholds", "show")
    assert active["version"] == 2 and active["thresholds"]["Pneumothorax"] == 0.55
    assert active["thresholds"]["Edema"] == 0.5  # the rest is carried over from v1

    staged = cli_json(node_config, "thresholds", "set", "Edema", "0.6", "--no-activate")
    assert staged["version"] == 3 and not staged["activated"]
    assert cli_json(node_config, "thresholds", "show")["version"] == 2


def test_activate_undoes_and_history_and_diff_say_who_changed_what(node_config: Path) -> None:
    cli(
        node_config,
        "thresholds",
        "set",
        "Pneumothorax",
        "0.55",
        "--author",
        "alice",
        "--note",
        "fewer false alarms",
    )
    cli(node_config, "thresholds", "activate", "1", "--author", "bob", "--note", "missed one")
    assert cli_json(node_config, "thresholds", "show")["version"] == 1
    again = cli_json(node_config, "thresholds", "activate", "1")
    assert again["changed"] is False  # already active: nothing recorded

    events = cli_json(node_config, "thresholds", "history")["events"]
    summary = [(e["event"], e["version"], e["who"]) for e in events]
    assert summary == [
        ("created", 1, "system"),
        ("activated", 1, "system"),
        ("created", 2, "alice"),
        ("activated", 2, "alice"),
        ("activated", 1, "bob"),
    ]
    assert events[2]["changes"] == [{"finding": "Pneumothorax", "before": 0.5, "after": 0.55}]
    assert events[2]["note"] == "fewer false alarms" and events[4]["note"] == "missed one"

    diff = cli_json(node_config, "thresholds", "diff", "1", "2")
    assert diff["changes"] == [{"finding": "Pneumothorax", "before": 0.5, "after": 0.55}]
    assert diff["b"]["author"] == "alice"
    table = cli(node_config, "thresholds", "diff", "1", "2")
    assert "Pneumothorax" in table and "+0.050" in table


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("set", "Pneumothorax", "0.95"), "can never be crossed"),
        (("set", "Pneumothorax", "0.1"), "[0.119, 0.881]"),
        (("set", "Pneumothoraxx", "0.5"), "unknown finding 'Pneumothoraxx'"),
        (("set", "Pneumothorax", "0.5"), "already 0.5 in the active version v1"),
        (("activate", "9"), "no threshold profile version 9 (versions: 1)"),
        (("diff", "1", "4"), "no threshold profile version 4"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(node_config: Path, args, reason) -> None:
    output = cli(node_config, "thresholds", *args, expect=2)
    assert output.startswith("dicom-node: error:") and reason in " ".join(output.split())
    assert cli_json(node_config, "thresholds", "history")["events"][-1]["version"] == 1


def test_versions_cannot_be_edited_even_by_hand(node_config: Path, database: Database) -> None:
    cli(node_config, "thresholds", "show")
    for statement in (
        "UPDATE threshold_profile SET thresholds_json = '{}'",
        "DELETE FROM threshold_activation",
    ):
        with pytest.raises(DatabaseError, match="immutable"), database.engine.begin() as c:
            c.exec_driver_sql(statement)


def test_a_running_node_sees_a_new_activation_at_its_next_lookup(
    node_config: Path, database: Database
) -> None:
    with database.sessions() as session:  # what the worker does once per study
        before = profiles.active_profile(session, {"Pneumothorax": 0.5})
        session.commit()
    cli(node_config, "thresholds", "set", "Pneumothorax", "0.6")
    with database.sessions() as session:
        after = profiles.active_profile(session)
    assert (before.label, before.thresholds["Pneumothorax"]) == ("v1", 0.5)
    assert (after.label, after.thresholds["Pneumothorax"]) == ("v2", 0.6)
    assert after.threshold_for("Brand New Finding", 0.45) == 0.45


def test_workers_meeting_their_first_study_at_once_share_one_version_1(
    database: Database,
) -> None:
    """Several workers report their first study together: each finds no profile and creates
    version 1. The one that loses must use the winner's, not fail its study (seen on
    PostgreSQL with three workers: two studies FAILED with "created by someone else")."""
    defaults = {"Pneumothorax": 0.5, "Cardiomegaly": 0.4}
    loser: dict[str, object] = {}
    with database.sessions.begin() as first:
        assert profiles.active_profile(first, defaults).version == 1  # not committed yet

        def second_worker() -> None:
            try:
                with database.sessions.begin() as second:
                    loser["profile"] = profiles.active_profile(second, defaults)
            except Exception as error:  # noqa: BLE001 - the assertion below names it
                loser["error"] = error

        thread = threading.Thread(target=second_worker)
        thread.start()
        time.sleep(0.5)  # the second worker is now waiting on the first one's version 1
    thread.join(30)
    assert "error" not in loser, loser.get("error")
    assert loser["profile"].version == 1 and loser["profile"].thresholds == defaults
    with database.read_only() as session:
        assert [p.version for p in profiles.list_profiles(session)] == [1]
