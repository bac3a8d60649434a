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


def test_study_page_lists_the_current_results_heat_maps_and_draws_them_small(
        database: Database, tmp_path) -> None:
    """Overlays of present findings, highest score first, found in the outbox; one removed by
    retention is no longer listed; any other object of the outbox is not drawn."""
    import io

    import numpy as np
    from PIL import Image
    from pydicom.uid import generate_uid

    from dicom_node import thumbnails
    from dicom_node.reporting.outbox import write_heatmap
    from dicom_node.reporting.uids import ResultKey, derived_uid, heatmap_uids
    from storage import results
    from storage.spool import Spool
    from tests.report_samples import WHEN, algorithm, dx_image, findings

    study, outbox, algo = generate_uid(), Spool(tmp_path / "outbox"), algorithm()
    source = dx_image(study)
    key = ResultKey.of(study_instance_uid=study, model_name=algo.name,
                       checkpoint_sha256s=algo.checkpoint_sha256s, profile="v1",
                       source_sop_instance_uids=[source.SOPInstanceUID])
    present = [f for f in findings() if f.present]  # Pneumothorax 0.88 is the highest
    uids = heatmap_uids(key.digest(), study, algo.name, version=1,
                        labels=[f.label for f in present])
    heat = np.zeros((600, 500), np.float32)
    heat[400:500, 300:450] = 1.0
    for finding in present:
        write_heatmap(outbox, source=source, pixels=np.full((600, 500), 90, np.uint8),
                      heat=heat, finding=finding, algorithm=algo, uids=uids[finding.label],
                      when=WHEN)
    with database.sessions.begin() as session:
        study_id = worklist.record_instance(session, worklist.InstanceRecord(
            source.SOPInstanceUID, source.SeriesInstanceUID, study, source.SOPClassUID,
            "1.2.840.10008.1.2.1", "DX", "CHEST", "PA", f"{study}/x.dcm", 1, "MOD"),
            WHEN).study_id
        results.add_result(session, results.NewResult(
            study_id=study_id, study_instance_uid=study, result_key=key.digest(), version=1,
            supersedes_id=None, worker_id="w", model_name=algo.name,
            checkpoint_sha256s=algo.checkpoint_sha256s, catalogue_version="c",
            clinical_use=False, profile_version=1, aggregation="mean",
            sr_series_instance_uid=derived_uid("s"), sr_sop_instance_uid=derived_uid("sr"),
            summary_series_instance_uid=derived_uid("t"),
            summary_sop_instance_uid=derived_uid("sc"),
            findings=tuple(results.FindingRecord(f.label, f.probability, f.threshold, f.present)
                           for f in findings()), images=()), WHEN)

    listed = thumbnails.heat_map_overlays(database, outbox.root, study)
    ranked = sorted(present, key=lambda f: f.probability, reverse=True)
    assert [o.label for o in listed] == [f.label for f in ranked]
    assert {o.source_sop_instance_uid for o in listed} == {source.SOPInstanceUID}
    png = thumbnails.heat_map_png(database, outbox.root, study, listed[0].sop_instance_uid)
    drawn = Image.open(io.BytesIO(png))
    assert drawn.mode == "RGB" and max(drawn.size) == thumbnails.OVERLAY_SIZE
    with pytest.raises(thumbnails.ImageUnavailable, match="no such attention map"):
        thumbnails.heat_map_png(database, outbox.root, study, derived_uid("sr"))
    outbox.absolute(outbox.relative_path(study, listed[0].sop_instance_uid)).unlink()
    assert [o.label for o in thumbnails.heat_map_overlays(database, outbox.root, study)] == [
        f.label for f in ranked[1:]]
    assert thumbnails.heat_map_overlays(database, outbox.root, "1.2.3.999") == []
