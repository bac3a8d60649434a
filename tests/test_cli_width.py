"""The CLI at 80 columns, as an admin's terminal shows it: the UIDs one needs to copy into the
next command are shown whole (folded over lines if need be), never cut to `1.3.6.1.4.1…`, and
no line is wider than the terminal."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from storage import worklist
from storage.db import open_database
from tests.peers import run_cli

# 64 characters: the longest UID the standard allows
STUDY_UID = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567"
SERIES_UID = STUDY_UID[:-1] + "8"
SOP_UID = STUDY_UID[:-1] + "9"


@pytest.fixture
def config(tmp_path):
    data = tmp_path / "data"
    database = open_database(f"sqlite:///{data / 'worklist.sqlite'}")
    record = worklist.InstanceRecord(
        sop_instance_uid=SOP_UID, series_instance_uid=SERIES_UID, study_instance_uid=STUDY_UID,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="DX", body_part_examined="CHEST", view_position="PA",
        spool_path=f"{STUDY_UID}/{SOP_UID}.dcm", size_bytes=1234, calling_ae_title="MODALITY1",
    )
    with database.sessions.begin() as session:
        worklist.record_instance(session, record, datetime.now(UTC))
    database.dispose()
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\ndata_dir = "{data}"\n')
    return path


def _screen(*args: str, config) -> list[str]:
    result = run_cli(*args, "--config", str(config), env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def _columns(lines: list[str]) -> list[str]:
    """Each table column's cell text, top to bottom, joined: a value folded over several lines
    of its column reads whole again (rich draws body cells between │ separators)."""
    columns: dict[tuple[int, int], str] = {}
    for line in lines:
        if "│" not in line:
            continue
        cells = line.split("│")
        for index, cell in enumerate(cells):
            key = (len(cells), index)  # tables of different column counts kept apart
            columns[key] = columns.get(key, "") + cell.strip()
    return list(columns.values())


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (("studies", "list"), [STUDY_UID]),
        (("studies", "show", STUDY_UID), [STUDY_UID, SOP_UID]),
        (("status",), [STUDY_UID, SOP_UID]),
    ],
    ids=["studies-list", "studies-show", "status"],
)
def test_uids_are_shown_whole_at_80_columns(config, command, shown):
    lines = _screen(*command, config=config)
    tables = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert tables and max(len(line) for line in tables) <= 80  # (paths may wrap elsewhere)
    assert "…" not in "\n".join(lines)
    columns = _columns(lines)
    for uid in shown:
        assert any(uid in text for text in columns), f"{uid} cut by {' '.join(command)}"


def test_status_says_how_many_other_objects_were_acknowledged_and_not_kept(config, tmp_path):
    from storage.ignored import IgnoredRecord, record_ignored

    database = open_database(f"sqlite:///{tmp_path / 'data' / 'worklist.sqlite'}")
    with database.sessions.begin() as session:
        for n in (1, 2):
            record_ignored(session, IgnoredRecord(
                sop_instance_uid=f"{SOP_UID[:-2]}{n}", study_instance_uid=STUDY_UID,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2", calling_ae_title="PACS"),
                datetime.now(UTC))
    database.dispose()
    lines = _screen("status", config=config)
    assert "ignored  2 instances of other SOP classes acknowledged, not kept" in lines
