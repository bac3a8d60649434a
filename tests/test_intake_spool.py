"""The spool: UID grammar before any path, atomic durable writes, no escapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.spool import InvalidUID, Spool, is_valid_uid

STUDY = "1.2.826.0.1.3680043.8.498.7"


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.1", True),
        ("0.0", True),
        ("1." + "2" * 62, True),  # 64 characters
        ("1." + "2" * 63, False),  # 65 characters
        ("1.02.3", True),  # leading zero in a component: real devices send these
        ("1.2.826.0.1.3680043.8.498.2026.011.029.7.01", True),
        ("00.1", True),
        ("1..2", False),
        (".1.2", False),
        ("1.2.", False),
        ("1.2.3 ", False),
        ("", False),
        (None, False),
        ("../../etc/passwd", False),
        ("1.2/3", False),
        ("1.2\\3", False),
        ("１.２", False),  # full-width digits are not DICOM digits
    ],
)
def test_uid_grammar(value: object, valid: bool) -> None:
    assert is_valid_uid(value) is valid


def test_write_is_complete_and_leaves_no_temporary(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    entry = spool.write(STUDY, STUDY + ".1", [b"head", memoryview(b"x" * 3_000_000)])
    assert entry.relative_path == f"{STUDY}/{STUDY}.1.dcm"
    assert entry.path.read_bytes() == b"head" + b"x" * 3_000_000
    assert entry.size_bytes == 3_000_004
    assert [p.name for p in entry.path.parent.iterdir()] == [entry.path.name]


def test_rewrite_replaces_atomically(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.write(STUDY, STUDY + ".1", [b"first"])
    entry = spool.write(STUDY, STUDY + ".1", [b"second"])
    assert entry.path.read_bytes() == b"second"


def test_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.write(STUDY, STUDY + ".1", [b"kept"])

    def broken():
        yield b"partial"
        raise OSError("disk went away")

    with pytest.raises(OSError):
        spool.write(STUDY, STUDY + ".1", broken())
    directory = tmp_path / "spool" / STUDY
    assert [p.name for p in directory.iterdir()] == [f"{STUDY}.1.dcm"]
    assert (directory / f"{STUDY}.1.dcm").read_bytes() == b"kept"


@pytest.mark.parametrize("study,sop", [("../x", STUDY + ".1"), (STUDY, "1.2/../../x")])
def test_invalid_uids_never_become_paths(tmp_path: Path, study: str, sop: str) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InvalidUID):
        spool.write(study, sop, [b"data"])
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_absolute_refuses_paths_outside_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.absolute(f"{STUDY}/{STUDY}.1.dcm") == (
        tmp_path / "spool" / STUDY / f"{STUDY}.1.dcm"
    )
    with pytest.raises(ValueError, match="escapes"):
        spool.absolute("../outside.dcm")


def test_a_shared_spool_leaves_temporaries_of_other_hosts_to_them(
    tmp_path: Path, database
) -> None:
    """Start-up reconciliation removes this host's interrupted writes, never another host's
    write in progress on the same (network) spool."""
    from datetime import UTC, datetime

    from dicom_node.reconcile import reconcile
    from storage.spool import HOST_TOKEN

    spool, outbox = Spool(tmp_path / "spool"), Spool(tmp_path / "outbox")
    directory = tmp_path / "spool" / STUDY
    directory.mkdir(parents=True)
    gone_pid = 2**22 + 7  # above any pid_max: no such process
    ours = directory / f".{STUDY}.9.dcm.{gone_pid}.7f3a.{HOST_TOKEN}.tmp"
    theirs = directory / f".{STUDY}.8.dcm.{gone_pid}.7f3a.intake-2_example_org.tmp"
    for path in (ours, theirs):
        path.write_bytes(b"half a file")
    counts = reconcile(database, spool, outbox, lambda: datetime.now(UTC))
    assert counts["removed_temporary"] == 1
    assert theirs.exists() and not ours.exists()
    assert {(host, pid) for _, host, pid in spool.temporaries()} == {
        ("intake-2_example_org", gone_pid)}
