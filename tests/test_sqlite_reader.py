"""The fast reader of `status`, `studies list` and `destinations list` (storage.sqlite_reader,
standard library sqlite3) answers every report query exactly as the SQLAlchemy one
(storage.session_reader, the storage modules' own queries) on the same work list: a node's
database migrated by Alembic and filled through the models, with every state, ties in time,
empty values and microseconds; a data directory where the node never ran; a file without the
schema."""

from __future__ import annotations

import random
import sqlite3
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from storage.db import open_database, open_empty
from storage.models import (
    DestinationState,
    IgnoredInstance,
    Instance,
    Outbound,
    ProcessHeartbeat,
    Result,
    Study,
)
from storage.reader import ReadError, open_reader, sqlite_file
from storage.session_reader import SessionReader
from storage.sqlite_reader import SqliteReader, connect
from storage.states import DestinationStatus, OutboundState, StudyState

T0 = datetime(2026, 11, 29, 8, 0, 0, 123456, tzinfo=UTC)
SOP_CLASSES = ["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.88.33",
               "1.2.840.10008.5.1.4.1.1.7"]


def _time(rng: random.Random) -> datetime:
    # few distinct seconds: ties in ORDER BY columns, broken by id as the queries say
    return T0 + timedelta(seconds=rng.randrange(6), microseconds=rng.choice([0, 1, 999999]))


def _maybe(rng: random.Random, value):
    return value if rng.random() < 0.6 else None


def _fill(session, rng: random.Random) -> None:
    """40 studies in every state, their instances, results and deliveries to three
    destinations, ignored instances, destination states and heartbeats."""
    states = list(StudyState)
    for n in range(40):
        uid = f"1.2.3.{n}"
        study = Study(
            study_instance_uid=uid, state=states[n % len(states)],
            instance_count=rng.randrange(1, 4), bytes_total=rng.randrange(10**9),
            first_arrival_at=_time(rng), last_arrival_at=_time(rng), state_changed_at=_time(rng),
            queued_at=_maybe(rng, _time(rng)), lease_until=_maybe(rng, _time(rng)),
            worker_id=_maybe(rng, f"host:{n}"), not_before=_maybe(rng, _time(rng)),
            attempts=rng.randrange(9), last_error=_maybe(rng, f"error {n} ∑ é"),
            skip_reason=_maybe(rng, "lateral only"), reopened_count=rng.randrange(3),
            purged_at=_maybe(rng, _time(rng)), purge_reason=_maybe(rng, "retention"),
            purged_files=_maybe(rng, 2), purged_bytes=_maybe(rng, 2**40),
        )
        session.add(study)
        session.flush()
        for i in range(study.instance_count):
            session.add(Instance(
                study_id=study.id, sop_instance_uid=f"{uid}.{i}", series_instance_uid=f"{uid}.9",
                study_instance_uid=uid, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1", modality=_maybe(rng, "DX"),
                body_part_examined=_maybe(rng, "CHEST"), view_position=_maybe(rng, "PA"),
                spool_path=f"{uid}/{uid}.{i}.dcm", size_bytes=rng.randrange(10**7),
                received_at=_time(rng), calling_ae_title=_maybe(rng, "MODALITY"),
            ))
        if n % 3:
            _add_result(session, study, rng)
    for n in range(7):
        session.add(IgnoredInstance(
            sop_instance_uid=f"9.9.{n}", study_instance_uid=f"1.2.3.{n % 3}",
            sop_class_uid=SOP_CLASSES[n % 3], calling_ae_title=None, received_at=_time(rng)))
    for name, state in (("PACS", DestinationStatus.UP), ("ARCHIVE", DestinationStatus.DOWN),
                        ("VNA", DestinationStatus.REFUSING)):
        session.add(DestinationState(
            name=name, state=state, since=_time(rng), failures=rng.randrange(5),
            next_probe_at=_maybe(rng, _time(rng)), last_success_at=_maybe(rng, _time(rng)),
            last_error=_maybe(rng, "connection refused"), last_error_at=_maybe(rng, _time(rng))))
    for pid in (11, 12, 13):
        session.add(ProcessHeartbeat(
            process_id=f"node-a:{pid}", host="node-a", pid=pid, role="serve",
            started_at=_time(rng), beat_at=_time(rng), model_state="loaded",
            model_error=_maybe(rng, "FileNotFoundError: x.pt")))


def _add_result(session, study: Study, rng: random.Random) -> None:
    uid = study.study_instance_uid
    result = Result(
        study_id=study.id, study_instance_uid=uid, result_key=f"key-{uid}", version=1,
        created_at=_time(rng), model_name="m", checkpoint_sha256s_json="[]",
        catalogue_version="1", clinical_use=False, profile_version=None, aggregation="mean",
        sr_series_instance_uid=f"{uid}.8", sr_sop_instance_uid=f"{uid}.8.1",
        summary_series_instance_uid=f"{uid}.7", summary_sop_instance_uid=f"{uid}.7.1",
    )
    session.add(result)
    session.flush()
    for destination in ("PACS", "ARCHIVE", "NEVER-CONTACTED"):
        session.add(Outbound(
            result_id=result.id, destination=destination, kind="sr", study_instance_uid=uid,
            sop_instance_uid=f"{uid}.8.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33",
            file_path="x.dcm", state=rng.choice(list(OutboundState)), attempts=0,
            next_attempt_at=_time(rng), created_at=_time(rng), sent_at=_maybe(rng, _time(rng))))


QUERIES = [
    ("study_state_counts", {}),
    ("list_studies", {}),
    ("list_studies", {"limit": 7}),
    *[("list_studies", {"state": state}) for state in StudyState],
    ("recent_instances", {}),
    ("recent_instances", {"limit": 50}),
    ("ignored_counts", {}),
    ("ignored_counts", {"study_instance_uid": "1.2.3.1"}),
    ("ignored_counts", {"study_instance_uid": "no such study"}),
    ("heartbeats", {}),
    ("outbound_state_counts", {}),
    ("destination_counts", {}),
    ("destination_states", {}),
    ("failed_since", {"since": T0 - timedelta(days=1)}),
    *[("failed_since", {"since": T0 + timedelta(seconds=s, microseconds=us)})
      for s in range(7) for us in (0, 1)],
    ("failed_since", {"since": (T0 + timedelta(seconds=2)).astimezone(
        datetime.now().astimezone().tzinfo)}),  # another offset: the same instant
]


@pytest.fixture(scope="module")
def node_database(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("worklist") / "worklist.sqlite"
    database = open_database(f"sqlite:///{path}")  # Alembic's schema, as a node has it
    with database.sessions.begin() as session:
        _fill(session, random.Random(12))
    database.dispose()
    return path


@pytest.mark.parametrize(("query", "arguments"), QUERIES,
                         ids=[f"{q}-{i}" for i, (q, _) in enumerate(QUERIES)])
def test_the_sqlite3_reader_answers_as_the_sqlalchemy_one(node_database, query, arguments):
    database = open_database(f"sqlite:///{node_database}", migrate=False)
    try:
        with database.read_only() as session:
            expected = getattr(SessionReader(session), query)(**arguments)
    finally:
        database.dispose()
    connection = connect(node_database)
    try:
        got = getattr(SqliteReader(connection), query)(**arguments)
    finally:
        connection.close()
    assert got == expected
    assert repr(got) == repr(expected)  # the same types too (aware datetimes, enum members)


def test_the_comparison_covers_every_field_with_values(node_database):
    """The database gives every view field a value somewhere (not only None) and lists more
    rows than the default limits, so the equality above is not between empty answers."""
    connection = connect(node_database)
    try:
        reader = SqliteReader(connection)
        for rows in (reader.list_studies(limit=100), reader.recent_instances(limit=100),
                     reader.heartbeats(), list(reader.destination_states().values())):
            for field in fields(rows[0]):
                assert any(getattr(r, field.name) is not None for r in rows), field.name
        assert len(reader.list_studies(limit=1000)) == 40
        assert len(reader.recent_instances(limit=1000)) > 5
        assert len(reader.destination_counts()) == 3
    finally:
        connection.close()


@pytest.mark.parametrize("query", sorted({q for q, _ in QUERIES}))
def test_where_the_node_never_ran_both_readers_find_an_empty_work_list(tmp_path, query):
    missing = tmp_path / "data" / "worklist.sqlite"
    arguments = dict(next(a for q, a in QUERIES if q == query))
    with open_reader(f"sqlite:///{missing}") as reader:
        got = getattr(reader, query)(**arguments)
    database = open_empty()
    try:
        with database.read_only() as session:
            expected = getattr(SessionReader(session), query)(**arguments)
    finally:
        database.dispose()
    assert got == expected
    assert not (tmp_path / "data").exists()  # nothing created


def test_a_file_without_the_schema_reads_as_empty_and_is_left_as_it_was(tmp_path):
    path = tmp_path / "worklist.sqlite"
    sqlite3.connect(path).close()  # an empty database file
    before = path.read_bytes()
    with open_reader(f"sqlite:///{path}") as reader:
        assert reader.list_studies() == []
        assert set(reader.study_state_counts().values()) == {0}
    assert path.read_bytes() == before


def test_an_unreadable_work_list_is_a_read_error_in_sqlite_s_words(tmp_path):
    path = tmp_path / "worklist.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ReadError, match="not a database"), open_reader(f"sqlite:///{path}"):
        pass


@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:////var/lib/dicom-node/worklist.sqlite", "/var/lib/dicom-node/worklist.sqlite"),
    ("sqlite:///data/worklist.sqlite", "data/worklist.sqlite"),
    ("sqlite+pysqlite:////srv/w.sqlite", "/srv/w.sqlite"),
    ("sqlite:///~/w.sqlite", str(Path("~/w.sqlite").expanduser())),
    # left to SQLAlchemy: memory, options, percent-encoding, other drivers and databases
    ("sqlite://", None), ("sqlite:///:memory:", None), ("sqlite:////srv/w.sqlite?mode=ro", None),
    ("sqlite:////srv/a%20b.sqlite", None), ("sqlite+aiosqlite:////srv/w.sqlite", None),
    ("postgresql+psycopg://node:secret@db/worklist", None),
])
def test_only_plain_sqlite_file_urls_take_the_sqlite3_reader(url, path):
    assert sqlite_file(url) == (None if path is None else Path(path))
