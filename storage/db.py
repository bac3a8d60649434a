"""Opening the work-list database: engine, SQLite pragmas, migrations, sessions.

`open_database(url)` is the one way in. It creates the engine (SQLite in WAL mode by default, any
SQLAlchemy URL such as postgresql+psycopg://... otherwise), brings the schema to the newest
Alembic revision, and returns a `Database` whose sessionmaker is shared by every thread.
Associations are threads: open one Session per unit of work, never share one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from storage.sqlite_reader import SQLITE_BUSY_TIMEOUT_MS

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# pg_advisory_xact_lock key held while migrating: "dcmn" in ASCII, any constant would do
MIGRATION_LOCK_KEY = 0x64636D6E
# Execution option read by the "begin" hook: deferred transactions for read-only work.
_READ_ONLY = "dicom_node_read_only"


@dataclass(frozen=True)
class EngineOptions:
    """Connection settings for a client/server database (PostgreSQL); SQLite ignores them.

    Each process holds at most `pool_size + max_overflow` connections (plus one for LISTEN
    wake-ups): size PostgreSQL's max_connections for every serve and worker process of every
    host together. `statement_timeout_seconds` (0: none) ends a statement stuck behind a lock;
    `connect_timeout_seconds` bounds the wait for an unreachable server (it then counts as
    down: 0xA700 to peers, workers pause)."""

    pool_size: int = 5
    max_overflow: int = 5
    statement_timeout_seconds: float = 30
    connect_timeout_seconds: float = 5


@dataclass(frozen=True)
class Database:
    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def read_only(self) -> Iterator[Session]:
        """A session for queries only; on SQLite it does not take the write lock."""
        with self.sessions() as session:
            session.connection(execution_options={_READ_ONLY: True})
            yield session

    def ping(self) -> None:
        """One trivial query; raises SQLAlchemyError when the database cannot be reached."""
        with self.read_only() as session:
            session.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


class NoSchemaError(RuntimeError):
    """A read-only opening found no work-list schema (the node never ran on this database)."""


def open_database(
    url: str, *, migrate: bool = True, options: EngineOptions | None = None
) -> Database:
    """Create the engine for `url`, upgrade the schema to head and return the Database."""
    engine = _create_engine(url, options)
    if migrate:
        upgrade_to_head(engine)
    return Database(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))


def open_empty() -> Database:
    """An in-memory work list with the current schema and no rows: what read-only commands show
    where the node never ran. Built from the models, without Alembic (0.4 s of imports)."""
    from storage.models import Base

    engine = _create_engine("sqlite://")
    Base.metadata.create_all(engine)
    return Database(url="sqlite://", engine=engine,
                    sessions=sessionmaker(engine, expire_on_commit=False))


def open_read_only(url: str, options: EngineOptions | None = None) -> Database:
    """The Database for queries: no migration (Alembic is not even imported), nothing created.

    Raises NoSchemaError when there is no work list there yet (a SQLite file that does not exist,
    or a database without the schema).
    """
    parsed = make_url(url)
    on_disk = parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:")
    if on_disk and not Path(str(parsed.database)).expanduser().is_file():
        raise NoSchemaError(f"no work list at {parsed.database} yet")
    engine = _create_engine(url, options)
    if not inspect(engine).has_table("study"):
        engine.dispose()
        raise NoSchemaError("the database has no work-list schema yet")
    return Database(url=url, engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer dicom-node: this code must not write to it."""


def upgrade_to_head(engine: Engine) -> list[str]:
    """Run `alembic upgrade head` on `engine`, programmatically (no alembic.ini needed); the
    revisions applied, oldest first (empty when the schema was current).

    On PostgreSQL the whole upgrade holds a transaction-level advisory lock
    (MIGRATION_LOCK_KEY): processes starting together on several hosts queue on it, the first
    migrates, the others then find the schema current. Raises SchemaTooNewError when the
    database's revision is not one this code knows (a newer dicom-node migrated it).
    """
    from alembic import command  # only here: importing Alembic costs more than a CLI query
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    script = ScriptDirectory.from_config(config)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
        current = schema_revision(connection)
        if current is not None and current not in {r.revision for r in script.walk_revisions()}:
            raise SchemaTooNewError(
                f"the work list is at schema revision {current}, newer than this dicom-node "
                f"knows (its newest is {script.get_current_head()}): upgrade dicom-node here"
            )
        pending = [r.revision for r in script.iterate_revisions("head", current or "base")]
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    return pending[::-1]


def migrate(url: str, options: EngineOptions | None = None) -> tuple[list[str], str | None]:
    """`dicom-node db upgrade`: upgrade the database at `url` to head; (revisions applied,
    revision now). Raises SchemaTooNewError, or SQLAlchemyError when it cannot be reached."""
    engine = _create_engine(url, options)
    try:
        applied = upgrade_to_head(engine)
        with engine.connect() as connection:
            return applied, schema_revision(connection)
    finally:
        engine.dispose()


def schema_revision(connection: Connection) -> str | None:
    """The Alembic revision the database is at; None for a database never migrated."""
    from alembic.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


_PG_UNAVAILABLE = {"57P01", "57P02", "57P03"}  # admin/crash shutdown, cannot connect now


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` says the database cannot be reached for now and the same work will
    succeed once it is back: a refused or lost connection (PostgreSQL SQLSTATE class 08,
    57P01-57P03, a connection psycopg could not open), an exhausted pool, a SQLite write lock
    held past busy_timeout. False for everything else (a constraint, a missing table)."""
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.TimeoutError | sa.DisconnectionError):
        return True
    if not isinstance(exc, sa.DBAPIError):
        return False
    if exc.connection_invalidated or isinstance(exc, sa.InterfaceError):
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate:
        return str(sqlstate).startswith("08") or sqlstate in _PG_UNAVAILABLE
    sqlite_name = getattr(exc.orig, "sqlite_errorname", None)
    if sqlite_name:
        return sqlite_name in ("SQLITE_BUSY", "SQLITE_LOCKED")
    return isinstance(exc, sa.OperationalError) and type(exc.orig).__module__.startswith("psycopg")


def _create_engine(url: str, options: EngineOptions | None = None) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        return _create_postgres_engine(url, options or EngineOptions())
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    _configure_sqlite(engine)
    return engine


def _create_postgres_engine(url: str, options: EngineOptions) -> Engine:
    """pool_pre_ping: a connection that died with a server restart is replaced, not used."""
    connect_args: dict[str, Any] = {"connect_timeout": max(1, round(options.connect_timeout_seconds))}
    if options.statement_timeout_seconds > 0:
        milliseconds = round(options.statement_timeout_seconds * 1000)
        connect_args["options"] = f"-c statement_timeout={milliseconds}"
    return create_engine(url, pool_pre_ping=True, pool_size=options.pool_size,
                         max_overflow=options.max_overflow, connect_args=connect_args)


def _configure_sqlite(engine: Engine) -> None:
    """WAL, full sync and a busy timeout on every connection; explicit BEGIN IMMEDIATE.

    pysqlite's own transaction handling starts transactions lazily, so a transaction that reads
    and then writes can fail with SQLITE_BUSY when another writer committed in between. Taking
    the write lock at BEGIN makes writers queue (up to busy_timeout) instead. synchronous=FULL
    fsyncs the WAL on every commit: an acknowledged instance survives a power cut, not only a
    kill -9.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")
