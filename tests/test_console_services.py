"""The service layer under the console, without a browser: the work list's filters and paging,
search by Accession Number (kept only as its SHA-256), accounts and sessions, the audit trail."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from dicom_node import audit, studies, users
from dicom_node.audit import Actor
from storage import worklist
from storage.db import Database
from storage.study_search import accession_sha256

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ADMIN = Actor("ada", "console")


def arrive(db: Database, n: int, at: datetime, accession: str | None = None,
           calling_ae: str = "MOD1") -> str:
    study = f"1.2.3.{n}"
    with db.sessions.begin() as session:
        worklist.record_instance(session, worklist.InstanceRecord(
            sop_instance_uid=f"1.2.3.{n}.1", series_instance_uid=f"1.2.3.{n}.0",
            study_instance_uid=study, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1", modality="DX", body_part_examined="CHEST",
            view_position="PA", spool_path=f"{study}/x.dcm", size_bytes=10,
            calling_ae_title=calling_ae, accession_sha256=accession_sha256(accession)), at)
    return study


def test_work_list_pages_newest_first_and_counts_all(database: Database) -> None:
    uids = [arrive(database, n, T0 + timedelta(minutes=n)) for n in range(30)]
    page1, total = studies.find_studies(database, studies.WorklistFilters(), 1, 25)
    page2, _ = studies.find_studies(database, studies.WorklistFilters(), 2, 25)
    assert total == 30 and len(page1) == 25 and len(page2) == 5
    assert [r.study_instance_uid for r in page1 + page2] == uids[::-1]


def test_work_list_filters_by_day_calling_ae_and_state(database: Database) -> None:
    arrive(database, 1, T0, calling_ae="MOD1")
    late = arrive(database, 2, T0 + timedelta(days=1), calling_ae="MOD2")
    by_day, _ = studies.find_studies(
        database, studies.WorklistFilters(day_from=date(2026, 3, 3), day_to=date(2026, 3, 3)),
        1, 25)
    assert [r.study_instance_uid for r in by_day] == [late]
    by_ae, _ = studies.find_studies(database, studies.WorklistFilters(calling_ae="MOD2"), 1, 25)
    assert [r.calling_ae_title for r in by_ae] == ["MOD2"]
    assert studies.find_studies(database, studies.WorklistFilters(state="done"), 1, 25)[1] == 0
    with pytest.raises(ValueError):
        studies.find_studies(database, studies.WorklistFilters(state="LOST"), 1, 25)


def test_search_finds_a_study_by_uid_or_accession_without_storing_the_number(
        database: Database) -> None:
    wanted = arrive(database, 1, T0, accession="ACC-77")
    arrive(database, 2, T0, accession="ACC-78")
    for text in ("ACC-77", " ACC-77 ", wanted):
        rows, total = studies.find_studies(database, studies.WorklistFilters(search=text), 1, 25)
        assert total == 1 and rows[0].study_instance_uid == wanted, text
    raw = database.engine.raw_connection()
    try:
        dump = "\n".join(raw.driver_connection.iterdump())
    finally:
        raw.close()
    assert "ACC-77" not in dump and accession_sha256("ACC-77") in dump


def test_sessions_end_with_the_user_and_expire(database: Database) -> None:
    users.add_user(database, "ada", "a long password", "admin", ADMIN, T0)
    users.add_user(database, "vic", "a long password", "viewer", ADMIN, T0)
    assert users.authenticate(database, "ada", "wrong password") is None
    assert users.authenticate(database, "nobody", "a long password") is None
    token = users.start_session(database, "vic", T0, timedelta(hours=8))
    who = users.session_user(database, token, T0 + timedelta(hours=7))
    assert who is not None and who.role == "viewer" and not who.is_admin
    assert users.session_user(database, token, T0 + timedelta(hours=8, seconds=1)) is None
    assert users.session_user(database, "forged", T0) is None
    users.remove_user(database, "vic", ADMIN, T0)
    assert users.session_user(database, token, T0 + timedelta(hours=1)) is None
    with pytest.raises(users.UserError, match="last admin"):
        users.remove_user(database, "ada", ADMIN, T0)


@pytest.mark.parametrize(("name", "password", "role", "message"), [
    ("bob", "short", "viewer", "10..1024 characters"),
    ("eve", "a long password", "root", "role must be one of viewer, admin"),
    ("-x", "a long password", "viewer", "must be 1..64 letters"),
    ("ada", "a long password", "viewer", "exists already"),
])
def test_account_changes_are_refused_in_words(database: Database, name: str, password: str,
                                              role: str, message: str) -> None:
    users.add_user(database, "ada", "a long password", "admin", ADMIN, T0)
    with pytest.raises(users.UserError, match=message):
        users.add_user(database, name, password, role, ADMIN, T0)
    assert [u.username for u in users.list_users(database)] == ["ada"]


def test_audit_rows_are_newest_first_with_before_and_after(database: Database) -> None:
    users.add_user(database, "ada", "a long password", "admin", Actor("root", "cli"), T0)
    users.set_password(database, "ada", "another password", ADMIN, T0 + timedelta(seconds=1))
    entries, total = audit.recent(database)
    assert total == 2
    assert [(e.action, e.actor, e.origin) for e in entries] == [
        ("user.passwd", "ada", "console"), ("user.add", "root", "cli")]
    assert entries[1].after == {"role": "admin"}
    assert "password" not in str(entries[0].after) and "another" not in str(entries)
    with pytest.raises(ValueError, match="origin"):
        Actor("x", "web")


def test_retry_dead_of_one_destination_requeues_only_its_rows_and_audits(
        database: Database, tmp_path) -> None:
    from dicom_node import destinations
    from dicom_node.settings import Settings
    from storage import outbound
    from storage.models import OutboundState
    from storage.spool import Spool
    from tests.outbound_samples import destination, queue_result

    queue_result(database, Spool(tmp_path / "outbox"), ["pacs", "other"])
    now = datetime.now(UTC)
    with database.sessions.begin() as session:
        for name in ("pacs", "other"):
            for delivery in outbound.claim_due(session, name, now, 60):
                outbound.mark_failed(session, delivery.id, "refused", None, now)
    settings = Settings(destinations=[destination("pacs", 104), destination("other", 105)])
    retried = destinations.retry_deliveries(settings, database, now, actor=ADMIN,
                                            all_dead=True, destination="pacs")
    assert len(retried) == 2
    with database.read_only() as session:
        states = {(d.destination, d.state) for d in outbound.list_deliveries(session)}
    assert states == {("pacs", OutboundState.PENDING), ("other", OutboundState.DEAD)}
    (entry,), _ = audit.recent(database)
    assert (entry.action, entry.target, entry.after["deliveries"]) == (
        "outbound.retry", "pacs", retried)
    with pytest.raises(destinations.UnknownDestination):
        destinations.retry_deliveries(settings, database, now, actor=ADMIN, all_dead=True,
                                      destination="nowhere")
