"""The Alembic migrations and the models describe the same schema; SQLite runs in WAL mode."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage.db import Database, open_database
from storage.models import Base
from tests.conftest import BOTH_BACKENDS


@BOTH_BACKENDS
def test_migrations_match_the_models(database: Database) -> None:
    with database.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_sqlite_is_durable_wal(database: Database) -> None:
    with database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_opening_twice_keeps_the_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'again.sqlite'}"
    first = open_database(url)
    with first.engine.begin() as connection:
        connection.exec_driver_sql(
            "INSERT INTO study (study_instance_uid, state, instance_count, bytes_total,"
            " first_arrival_at, last_arrival_at, state_changed_at, attempts, reopened_count)"
            " VALUES ('1.2', 'QUEUED', 0, 0, '2024-01-01', '2024-01-01', '2024-01-01', 0, 0)"
        )
    first.dispose()
    second = open_database(url)
    with second.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM study").scalar() == 1
    second.dispose()
