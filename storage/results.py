"""Results: what each worker run concluded for a study, with everything needed to explain it
later (model identity, the thresholds used, study-level findings, per-image scores).

A study's results are numbered 1, 2, ...; each new one supersedes the previous (a late instance
reopened the study, or it was processed again). A result is identified by `result_key`, a hash
of its inputs, so the same inputs never make a second result. A result without findings is the
"not analysed" report of a skipped study; its images carry the reasons.

Like the work list, functions take the caller's Session and never commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import ImageEmbedding, ImageScore, Result, ResultFinding

EMBEDDING_DTYPE = "float32"  # little-endian; 4 bytes per value


@dataclass(frozen=True)
class FindingRecord:
    label: str
    probability: float
    threshold: float
    present: bool
    derivation: str | None = None  # how a derived score was made; None: scored by prompts


@dataclass(frozen=True)
class ImageRecord:
    sop_instance_uid: str
    eligible: bool
    reason: str | None = None  # why it was not scored
    scores: Mapping[str, float] | None = None
    flags: tuple[str, ...] = ()  # how eligibility was decided, e.g. view_position_missing
    # checkpoint SHA-256 -> the image's L2-normalised embedding, float32 little-endian bytes
    embeddings: Mapping[str, bytes] | None = None


@dataclass(frozen=True)
class NewResult:
    study_id: int
    study_instance_uid: str
    result_key: str
    version: int
    supersedes_id: int | None
    worker_id: str | None
    model_name: str
    checkpoint_sha256s: tuple[str, ...]
    catalogue_version: str
    clinical_use: bool
    profile_version: int | None
    aggregation: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    summary_series_instance_uid: str
    summary_sop_instance_uid: str
    findings: tuple[FindingRecord, ...]
    images: tuple[ImageRecord, ...]
    text_series_instance_uid: str | None = None  # the text report; None: none was made
    text_sop_instance_uid: str | None = None


@dataclass(frozen=True)
class ResultView:
    id: int
    study_id: int
    study_instance_uid: str
    result_key: str
    version: int
    supersedes_id: int | None
    created_at: datetime
    model_name: str
    checkpoint_sha256s: tuple[str, ...]
    catalogue_version: str
    clinical_use: bool
    profile_version: int | None
    aggregation: str
    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    summary_series_instance_uid: str
    summary_sop_instance_uid: str
    findings: tuple[FindingRecord, ...]
    images: tuple[ImageRecord, ...]
    text_series_instance_uid: str | None = None  # the text report; None: none was made
    text_sop_instance_uid: str | None = None

    @property
    def analysed(self) -> bool:
        """False for a "not analysed" result (a skipped study's report): it has no findings."""
        return bool(self.findings)


def add_result(session: Session, new: NewResult, now: datetime) -> int:
    """Insert a result with its findings and image scores; returns its id. The unique
    (study, version) and result_key constraints refuse a duplicate."""
    row = Result(
        study_id=new.study_id,
        study_instance_uid=new.study_instance_uid,
        result_key=new.result_key,
        version=new.version,
        supersedes_id=new.supersedes_id,
        created_at=now,
        worker_id=new.worker_id,
        model_name=new.model_name,
        checkpoint_sha256s_json=json.dumps(list(new.checkpoint_sha256s)),
        catalogue_version=new.catalogue_version,
        clinical_use=new.clinical_use,
        profile_version=new.profile_version,
        aggregation=new.aggregation,
        sr_series_instance_uid=new.sr_series_instance_uid,
        sr_sop_instance_uid=new.sr_sop_instance_uid,
        summary_series_instance_uid=new.summary_series_instance_uid,
        summary_sop_instance_uid=new.summary_sop_instance_uid,
        text_series_instance_uid=new.text_series_instance_uid,
        text_sop_instance_uid=new.text_sop_instance_uid,
    )
    session.add(row)
    session.flush()
    session.add_all(
        ResultFinding(
            result_id=row.id, position=i, label=f.label, probability=f.probability,
            threshold=f.threshold, present=f.present, derivation=f.derivation,
        )
        for i, f in enumerate(new.findings)
    )
    images = [
        ImageScore(
            result_id=row.id, sop_instance_uid=img.sop_instance_uid, eligible=img.eligible,
            reason=img.reason,
            scores_json=None if img.scores is None else json.dumps(dict(img.scores)),
            flags_json=json.dumps(list(img.flags)) if img.flags else None,
        )
        for img in new.images
    ]
    session.add_all(images)
    session.flush()
    session.add_all(
        ImageEmbedding(
            image_score_id=stored.id, checkpoint_sha256=sha, dtype=EMBEDDING_DTYPE,
            dim=len(vector) // 4, vector=vector,
        )
        for stored, img in zip(images, new.images, strict=True)
        for sha, vector in (img.embeddings or {}).items()
    )
    session.flush()
    return row.id


@dataclass(frozen=True)
class StudyScores:
    """The study-level probabilities of a study's newest analysed result."""

    study_instance_uid: str
    result_id: int
    created_at: datetime
    probabilities: Mapping[str, float]  # finding label -> study-level probability
    present: Mapping[str, bool]  # the decision reported then (under that result's profile)
    checkpoint_sha256s: tuple[str, ...] = ()  # the model that scored it


@dataclass(frozen=True)
class StudyEmbeddings:
    """The image embeddings of a study's newest analysed result, to score new prompts on."""

    study_instance_uid: str
    result_id: int
    created_at: datetime
    aggregation: str  # image -> study rule of that result ("mean" | "max")
    checkpoint_sha256s: tuple[str, ...]  # ensemble members in order (a checkpoint may repeat)
    images: tuple[Mapping[str, bytes], ...]  # per eligible image: checkpoint SHA-256 -> vector


def _newest_analysed(limit: int | None, study_uids: Sequence[str] | None = None) -> Any:
    """Ids of each study's newest result when it has findings, newest first."""
    newest = (
        select(func.max(Result.id).label("id")).group_by(Result.study_id).subquery()
    )
    query = (
        select(Result.id)
        .join(newest, newest.c.id == Result.id)
        .where(select(ResultFinding.id).where(ResultFinding.result_id == Result.id).exists())
        .order_by(Result.created_at.desc(), Result.id.desc())
    )
    if study_uids is not None:
        query = query.where(Result.study_instance_uid.in_(list(study_uids)))
    return query.limit(limit) if limit is not None else query


def recent_study_scores(session: Session, limit: int) -> list[StudyScores]:
    """Study-level probabilities of the `limit` most recently analysed studies (each study's
    newest result, skipped "not analysed" ones left out), newest first."""
    ids = list(session.scalars(_newest_analysed(limit)))
    rows = session.scalars(select(Result).where(Result.id.in_(ids))).all()
    by_id = {r.id: r for r in rows}
    return [
        StudyScores(
            by_id[i].study_instance_uid, i, by_id[i].created_at,
            {f.label: f.probability for f in by_id[i].findings},
            {f.label: f.present for f in by_id[i].findings},
            tuple(json.loads(by_id[i].checkpoint_sha256s_json)),
        )
        for i in ids
    ]


def study_embeddings(
    session: Session, limit: int | None = None, study_uids: Sequence[str] | None = None
) -> list[StudyEmbeddings]:
    """Embeddings of the most recently analysed studies (`limit` of them), or of the studies
    `study_uids`, newest first; each study's newest analysed result, its eligible images only.
    Images scored before embeddings were kept have an empty mapping."""
    ids = list(session.scalars(_newest_analysed(limit, study_uids)))
    results = {r.id: r for r in session.scalars(select(Result).where(Result.id.in_(ids)))}
    vectors: dict[int, dict[str, bytes]] = {}
    rows = session.execute(
        select(ImageScore.id, ImageEmbedding.checkpoint_sha256, ImageEmbedding.vector)
        .join(ImageEmbedding, ImageEmbedding.image_score_id == ImageScore.id)
        .where(ImageScore.result_id.in_(ids))
    )
    for image_id, sha, vector in rows:
        vectors.setdefault(image_id, {})[sha] = vector
    out = []
    for i in ids:
        r = results[i]
        out.append(StudyEmbeddings(
            r.study_instance_uid, r.id, r.created_at, r.aggregation,
            tuple(json.loads(r.checkpoint_sha256s_json)),
            tuple(vectors.get(s.id, {}) for s in r.image_scores if s.eligible),
        ))
    return out


def latest_result(session: Session, study_id: int) -> ResultView | None:
    """The study's newest result (the one a new result would supersede)."""
    row = session.scalars(
        select(Result).where(Result.study_id == study_id).order_by(Result.version.desc()).limit(1)
    ).first()
    return None if row is None else _view(row)


def result_by_id(session: Session, result_id: int | None) -> ResultView | None:
    """The result with this id (None for None or an id that is not there)."""
    row = None if result_id is None else session.get(Result, result_id)
    return None if row is None else _view(row)


def find_result(session: Session, result_key: str) -> ResultView | None:
    row = session.scalars(select(Result).where(Result.result_key == result_key)).first()
    return None if row is None else _view(row)


def results_for_study(session: Session, study_instance_uid: str) -> list[ResultView]:
    rows = session.scalars(
        select(Result)
        .where(Result.study_instance_uid == study_instance_uid)
        .order_by(Result.version)
    )
    return [_view(r) for r in rows]


def newest_result(session: Session) -> ResultView | None:
    """The most recently made result of any study (None when there is none)."""
    row = session.scalars(select(Result).order_by(Result.id.desc()).limit(1)).first()
    return None if row is None else _view(row)


def result_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(Result)) or 0


def _view(row: Result) -> ResultView:
    return ResultView(
        id=row.id,
        study_id=row.study_id,
        study_instance_uid=row.study_instance_uid,
        result_key=row.result_key,
        version=row.version,
        supersedes_id=row.supersedes_id,
        created_at=row.created_at,
        model_name=row.model_name,
        checkpoint_sha256s=tuple(json.loads(row.checkpoint_sha256s_json)),
        catalogue_version=row.catalogue_version,
        clinical_use=row.clinical_use,
        profile_version=row.profile_version,
        aggregation=row.aggregation,
        sr_series_instance_uid=row.sr_series_instance_uid,
        sr_sop_instance_uid=row.sr_sop_instance_uid,
        summary_series_instance_uid=row.summary_series_instance_uid,
        summary_sop_instance_uid=row.summary_sop_instance_uid,
        findings=_findings(row.findings),
        images=tuple(
            ImageRecord(
                sop_instance_uid=s.sop_instance_uid, eligible=s.eligible, reason=s.reason,
                scores=None if s.scores_json is None else json.loads(s.scores_json),
                flags=tuple(json.loads(s.flags_json)) if s.flags_json else (),
            )
            for s in row.image_scores
        ),
        text_series_instance_uid=row.text_series_instance_uid,
        text_sop_instance_uid=row.text_sop_instance_uid,
    )


def _findings(rows: Sequence[ResultFinding]) -> tuple[FindingRecord, ...]:
    return tuple(
        FindingRecord(f.label, f.probability, f.threshold, f.present, f.derivation) for f in rows
    )
