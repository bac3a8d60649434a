"""SQLAlchemy 2 typed models. The intake helper owns `Base`, `Study` and `Instance`; other parts
append their own model classes at the end of this file (and a migration for each).

No patient identifiers live in the work list: the spool file is the full original dataset, the
database keeps only what routing and processing need (UIDs, SOP class, modality, view).
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from storage.states import DestinationStatus, OutboundState, StudyState

UID_LENGTH = 64


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text).

    Naive datetimes are rejected on the way in, so a forgotten `tzinfo` fails loudly instead of
    being compared against aware values later.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: work-list times must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Named constraints: Alembic's batch mode on SQLite needs names to alter or drop them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    state: Mapped[StudyState] = mapped_column(
        Enum(StudyState, name="study_state", native_enum=False, length=16), index=True
    )
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    first_arrival_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_arrival_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state_changed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    queued_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    # QUEUED after a transient failure: not claimed before this time (backoff)
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # an admin asked for a new result even if the inputs are those of the last one
    reprocess: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    reopened_count: Mapped[int] = mapped_column(Integer, default=0)
    # Retention (migration 0010): when the spool and outbox files were deleted, why
    # ("retention" | "disk-pressure"), and how many files and bytes went. Files that arrived
    # after purged_at (a late instance) are not covered by it.
    purged_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    purge_reason: Mapped[str | None] = mapped_column(String(32))
    purged_files: Mapped[int | None] = mapped_column(Integer)
    purged_bytes: Mapped[int | None] = mapped_column(BigInteger)

    instances: Mapped[list[Instance]] = relationship(
        back_populates="study", order_by="Instance.id", passive_deletes=True
    )

    __table_args__ = (Index("ix_study_state_last_arrival", "state", "last_arrival_at"),)


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    spool_path: Mapped[str] = mapped_column(String(512))  # relative to the spool root
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    # SHA-256 of the Accession Number (migration 0012): the console finds a study by it without
    # the work list holding the number itself
    accession_sha256: Mapped[str | None] = mapped_column(String(64), index=True)

    study: Mapped[Study] = relationship(back_populates="instances")


# --- Threshold profiles (thresholds helper; migration 0002_threshold_profiles) ---------------
# Versions are immutable: a change is a new row. The active version is the newest activation
# row, so "exactly one active" holds by construction and every activation stays on record.


class ThresholdProfile(Base):
    __tablename__ = "threshold_profile"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    thresholds_json: Mapped[str] = mapped_column(Text)  # {"Finding label": threshold, ...}
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    note: Mapped[str | None] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(64))  # defaults | set | calibrate:mcc | ...
    provenance_json: Mapped[str] = mapped_column(Text)  # labels/model hashes, policy, ...
    based_on_version: Mapped[int | None] = mapped_column(Integer)


class ThresholdActivation(Base):
    __tablename__ = "threshold_activation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile_version: Mapped[int] = mapped_column(
        ForeignKey("threshold_profile.version"), index=True
    )
    activated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    activated_by: Mapped[str] = mapped_column(String(128))
    note: Mapped[str | None] = mapped_column(Text)


# --- Results and outbound deliveries (report helper; migration 0003_results_outbound) -------
# A result is what one worker run concluded for a study; a study has one per run, numbered by
# `version`, the newest superseding the older ones. An outbound row is one object (SR or summary
# image) for one destination, unique on (sop_instance_uid, destination) so nothing is queued,
# and therefore delivered, twice.


class Result(Base):
    __tablename__ = "result"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    result_key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the inputs
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per study
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("result.id"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    model_name: Mapped[str] = mapped_column(String(128))
    checkpoint_sha256s_json: Mapped[str] = mapped_column(Text)  # ["<sha256>", ...]
    catalogue_version: Mapped[str] = mapped_column(String(64))
    clinical_use: Mapped[bool] = mapped_column(Boolean)
    profile_version: Mapped[int | None] = mapped_column(Integer)  # None: catalogue defaults
    aggregation: Mapped[str] = mapped_column(String(32))  # image -> study rule, e.g. "mean"
    sr_series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sr_sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    summary_series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    summary_sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    # The text report (migration 0011_text_report); None for results made before it existed.
    text_series_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    text_sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), unique=True)

    findings: Mapped[list[ResultFinding]] = relationship(
        order_by="ResultFinding.position", passive_deletes=True
    )
    image_scores: Mapped[list[ImageScore]] = relationship(
        order_by="ImageScore.id", passive_deletes=True
    )

    __table_args__ = (UniqueConstraint("study_id", "version"),)


class ResultFinding(Base):
    __tablename__ = "result_finding"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("result.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # catalogue order
    label: Mapped[str] = mapped_column(String(128))
    probability: Mapped[float] = mapped_column(Float)  # study level, 0..1
    threshold: Mapped[float] = mapped_column(Float)  # the threshold used, 0..1
    present: Mapped[bool] = mapped_column(Boolean)
    # Migration 0011b: how a derived finding's score was made; NULL: scored by its prompt pair
    derivation: Mapped[str | None] = mapped_column(Text)


class ImageScore(Base):
    __tablename__ = "image_score"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("result.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    eligible: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)  # why an image was not scored
    scores_json: Mapped[str | None] = mapped_column(Text)  # {"label": probability, ...}
    flags_json: Mapped[str | None] = mapped_column(Text)  # ["view_position_missing", ...]


class Outbound(Base):
    __tablename__ = "outbound"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("result.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # sr | summary | text
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    file_path: Mapped[str] = mapped_column(String(512))  # relative to the outbox root
    state: Mapped[OutboundState] = mapped_column(
        Enum(OutboundState, name="outbound_state", native_enum=False, length=16)
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # A sender's claim (migration 0007): "host:pid" of the sender and until when it holds the row
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination"),
        Index("ix_outbound_due", "state", "destination", "next_attempt_at"),
    )


# --- Ignored instances (intake; migration 0004_ignored_instances) ---------------------------
# A storage object the node does not analyse (CT, SR, KO, PR, SC... forwarded with a chest
# study) when `[node] other_sop_classes = "ignore"`: acknowledged with Success, its bulk data
# not kept. The row is the record that it arrived ("ignored, SOP class X"); it does not create
# or reopen a study, so it never produces work or a report.


class IgnoredInstance(Base):
    __tablename__ = "ignored_instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UtcDateTime)


# --- Destination state (outbound helper; migration 0007_destination_state) -------------------
# One row per destination name: whether it is up, down (unreachable) or refusing (it answers
# but refuses associations or storage), since when, the last error in words and when to probe
# it next. A destination without a row has never failed: up.


class DestinationState(Base):
    __tablename__ = "destination_state"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[DestinationStatus] = mapped_column(
        Enum(DestinationStatus, name="destination_status", native_enum=False, length=16)
    )
    since: Mapped[datetime] = mapped_column(UtcDateTime)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # consecutive, for the backoff
    next_probe_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_success_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_error_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


# --- Process heartbeats (health; migration 0009_heartbeat) ----------------------------------
# One row per running node process (`serve` or a standalone `worker`), keyed "host:pid" so that
# processes on several hosts can share one database. The process rewrites beat_at every few
# seconds and deletes its row on a clean shutdown; a row whose beat_at is old belongs to a
# process that died. model_state says how far its inference model got (off when the process
# runs no worker).


class ProcessHeartbeat(Base):
    __tablename__ = "heartbeat"

    process_id: Mapped[str] = mapped_column(String(128), primary_key=True)  # "host:pid"
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))  # serve | worker
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    beat_at: Mapped[datetime] = mapped_column(UtcDateTime)
    model_state: Mapped[str] = mapped_column(String(16))  # off|loading|loaded|missing|corrupt|failed
    model_error: Mapped[str | None] = mapped_column(Text)


# --- Embeddings, calibration sets, catalogue revisions (console; migration 0013) -------------
# An image embedding is one checkpoint's L2-normalised image features of one scored image
# (float32 little-endian, `dim` values, 2 KB at D = 512): with a prompt pair's text embedding it
# gives the image's probability again, so a new prompt costs one text encoding.
# A calibration set is the labelled scores a `thresholds calibrate` run measured, kept so that
# a proposed threshold's sensitivity and specificity can be shown without the images.
# A catalogue revision adds a finding to the findings catalogue (disabled) or enables/disables
# one that was added; the shipped/configured TOML file stays the base, never rewritten.


class ImageEmbedding(Base):
    __tablename__ = "image_embedding"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_score_id: Mapped[int] = mapped_column(
        ForeignKey("image_score.id", ondelete="CASCADE"), index=True
    )
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    dtype: Mapped[str] = mapped_column(String(16))  # "float32" (little-endian)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (UniqueConstraint("image_score_id", "checkpoint_sha256"),)


class CalibrationSet(Base):
    __tablename__ = "calibration_set"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    author: Mapped[str] = mapped_column(String(128))
    labels_name: Mapped[str] = mapped_column(String(255))  # the labels CSV's file name
    labels_sha256: Mapped[str] = mapped_column(String(64))
    label_policy: Mapped[str] = mapped_column(Text)
    model_name: Mapped[str] = mapped_column(String(128))
    checkpoint_sha256s_json: Mapped[str] = mapped_column(Text)
    catalogue_version: Mapped[str] = mapped_column(String(64))
    profile_version: Mapped[int | None] = mapped_column(Integer)  # the version it produced


class CalibrationScore(Base):
    __tablename__ = "calibration_score"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    calibration_set_id: Mapped[int] = mapped_column(
        ForeignKey("calibration_set.id", ondelete="CASCADE"), index=True
    )
    finding: Mapped[str] = mapped_column(String(128))
    labels_json: Mapped[str] = mapped_column(Text)  # [1, 0, ...] for the labelled, scored images
    scores_json: Mapped[str] = mapped_column(Text)  # [0.51, ...] in the same order

    __table_args__ = (UniqueConstraint("calibration_set_id", "finding"),)


class CatalogueRevision(Base):
    __tablename__ = "catalogue_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, unique=True)  # 1, 2, ...
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    author: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(16))  # add | enable | disable
    label: Mapped[str] = mapped_column(String(128))
    entry_json: Mapped[str | None] = mapped_column(Text)  # the [[finding]] table, for add
    provenance_json: Mapped[str] = mapped_column(Text)  # AUROC, prompts tried on, ...


# --- Console accounts, sessions and the audit trail (console; migration 0012_console) -------
# A user signs in to the HTTP console with a local account (argon2 hash, never the password).
# A console session is a server-side row keyed by the SHA-256 of the random cookie value, so a
# stolen database does not hold usable cookies, and signing out or removing a user ends its
# sessions at once. An audit row records every change made from the console or the CLI: who,
# when, from where, what, and the state before and after (JSON; never patient names or IDs).


class UserAccount(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # viewer | admin
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    password_changed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ConsoleSession(Base):
    __tablename__ = "console_session"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("user_account.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    notice: Mapped[str | None] = mapped_column(Text)  # shown once on the next page (after a POST)


class AuditEvent(Base):
    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(128))  # console user name, or the OS user (CLI)
    origin: Mapped[str] = mapped_column(String(16))  # console | cli
    action: Mapped[str] = mapped_column(String(64), index=True)  # e.g. study.retry
    target: Mapped[str | None] = mapped_column(String(255))  # a UID, a name, a version
    before_json: Mapped[str | None] = mapped_column(Text)
    after_json: Mapped[str | None] = mapped_column(Text)
