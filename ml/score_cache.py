"""Score every image once: probabilities cached on disk by image content and model identity.

The key is (SHA-256 of the image file's bytes, model key), where the model key hashes the
checkpoint files' SHA-256s (in ensemble order), the findings catalogue version (prompts),
the DICOM conversion and whether compressed images are decoded at reduced resolution.
Renaming or copying an image keeps its scores; changing a checkpoint, a prompt, the
conversion or the reduced-resolution setting scores it afresh. Images the engine declines (e.g. a lateral view)
are cached with their reason, so they are not retried either; unexpected failures are not.

Storage is one SQLite file (stdlib `sqlite3`; ml/ stays free of the node's database layer).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

CACHE_FILE_NAME = "score-cache.sqlite"
_READ_BLOCK = 1 << 20


class ScoredImage(Protocol):
    """What the engine's `score_paths` returns per image (`ml.engine.ImageScore`)."""

    probabilities: dict[str, float] | None
    skipped_reason: str | None


Scorer = Callable[[Sequence[Path]], Sequence[ScoredImage]]


@dataclass(frozen=True)
class CachedScore:
    image_sha256: str
    probabilities: dict[str, float] | None
    skipped_reason: str | None
    from_cache: bool


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def model_key(
    checkpoint_sha256s: Sequence[str], catalogue_version: str, conversion: str,
    reduced_resolution: bool = False,
) -> str:
    """One string naming everything that changes a probability besides the image
    (`reduced_resolution`: JPEG 2000 / JPEG decoded near the model's size, ml.decoders)."""
    fields: dict[str, object] = {
        "checkpoints": list(checkpoint_sha256s),
        "catalogue": catalogue_version,
        "conversion": conversion,
    }
    if reduced_resolution:  # absent when off: keys written before the option stay valid
        fields["reduced_resolution"] = True
    payload = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class ScoreCache:
    """A SQLite file of (image hash, model key) -> probabilities or skip reason."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS scores (image_sha256 TEXT NOT NULL, model_key TEXT NOT NULL,"
                " probabilities TEXT, skipped_reason TEXT, created_at TEXT NOT NULL,"
                " PRIMARY KEY (image_sha256, model_key))"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # commits, or rolls back on error
                yield db
        finally:
            db.close()

    def get_many(self, hashes: Sequence[str], key: str) -> dict[str, CachedScore]:
        found: dict[str, CachedScore] = {}
        unique = sorted(set(hashes))
        with self._connect() as db:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT image_sha256, probabilities, skipped_reason FROM scores"
                    f" WHERE model_key = ? AND image_sha256 IN ({marks})",
                    (key, *chunk),
                )
                for sha, probabilities, reason in rows:
                    found[sha] = CachedScore(
                        sha,
                        json.loads(probabilities) if probabilities else None,
                        reason,
                        from_cache=True,
                    )
        return found

    def put_many(self, scores: Sequence[CachedScore], key: str) -> None:
        now = datetime.now(UTC).isoformat()
        with self._connect() as db:
            db.executemany(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        s.image_sha256,
                        key,
                        json.dumps(s.probabilities) if s.probabilities is not None else None,
                        s.skipped_reason,
                        now,
                    )
                    for s in scores
                ],
            )


def score_paths_cached(
    paths: Sequence[Path],
    cache: ScoreCache,
    key: str,
    scorer_factory: Callable[[], Scorer],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[CachedScore]:
    """Scores for `paths` in order; only images whose content is not cached under `key` reach the
    scorer, each distinct content once. `scorer_factory` is called only if something is missing
    (loading a model is the slow part); `progress(n)` is told about every n images done."""
    advance = progress or (lambda n: None)
    hashes = [file_sha256(p) for p in paths]
    known = cache.get_many(hashes, key)
    first_path: dict[str, Path] = {}
    for sha, path in zip(hashes, paths):
        if sha not in known:
            first_path.setdefault(sha, path)
    advance(len(paths) - len(first_path))
    todo = list(first_path.items())
    scorer = scorer_factory() if todo else None
    for start in range(0, len(todo), batch_size):
        batch = todo[start : start + batch_size]
        results = scorer([path for _, path in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"scorer returned {len(results)} results for {len(batch)} images")
        fresh = [
            CachedScore(
                sha,
                dict(r.probabilities) if r.probabilities is not None else None,
                r.skipped_reason,
                from_cache=False,
            )
            for (sha, _), r in zip(batch, results)
        ]
        cache.put_many([s for s in fresh if _cacheable(s)], key)
        known.update({s.image_sha256: s for s in fresh})
        advance(len(batch))
    return [known[sha] for sha in hashes]


def _cacheable(score: CachedScore) -> bool:
    """Scores and decisions about the content (a lateral view, an unreadable file) are kept;
    an unexpected failure ("failed: ...", e.g. out of memory) is worth another try next time."""
    return score.probabilities is not None or not (score.skipped_reason or "").startswith("failed")
