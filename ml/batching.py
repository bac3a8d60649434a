"""One model instance scoring for several worker threads, batching their images together.

`BatchingScorer(engine)` stands in for a `ml.engine.ZeroShotEngine` (same `score_uint8`,
`score_uint8_with_embeddings`, `labels`, `identity`; anything else, such as `heat_maps` and
`maps_from_local`, goes to the engine directly): every thread's call is queued, one scoring
thread takes whatever arrived within `window_seconds` (up to `max_images`), scores it in one
call of the engine and hands each caller its own rows (of the embeddings and, to a caller that
asked for them, of the local features too). On a GPU that is one forward pass for several
studies instead of one per study; with a single caller it only adds the window.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.engine import EmbeddedScores

DEFAULT_WINDOW_SECONDS = 0.02


class BatchingScorer:
    def __init__(self, engine: Any, max_images: int = 32,
                 window_seconds: float = DEFAULT_WINDOW_SECONDS) -> None:
        self.engine = engine
        self.max_images = max_images
        self.window_seconds = window_seconds
        self.batches = 0  # engine calls made (for tests and benches)
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="batching-scorer", daemon=True)
        self._thread.start()

    @property
    def labels(self) -> Any:
        return self.engine.labels

    @property
    def identity(self) -> Any:
        return self.engine.identity

    def __getattr__(self, name: str) -> Any:  # heat_maps, findings, catalogue, ...
        return getattr(self.engine, name)

    def score_uint8(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(N, L) scores for these images, exactly as `engine.score_uint8` gives them;
        scored together with other threads' images. Raises what the engine raised."""
        return self.score_uint8_with_embeddings(images).probabilities

    def score_uint8_with_embeddings(
        self, images: Sequence[np.ndarray], *, local_features: bool = False
    ) -> EmbeddedScores:
        """`engine.score_uint8_with_embeddings` for these images (their rows only), scored
        together with other threads' images; the batch is scored with local features when
        any of its callers asked. Raises what the engine raised."""
        if len(images) == 0:
            return self.engine.score_uint8_with_embeddings([])
        done: Future[EmbeddedScores] = Future()
        self._requests.put(_Request(list(images), local_features, done))
        return done.result()

    def _run(self) -> None:
        while True:
            batch = [self._requests.get()]
            count = len(batch[0].images)
            while count < self.max_images:
                try:
                    request = self._requests.get(timeout=self.window_seconds)
                except queue.Empty:
                    break
                batch.append(request)
                count += len(request.images)
            self._score(batch)

    def _score(self, batch: list[_Request]) -> None:
        images = [image for request in batch for image in request.images]
        local = any(request.local_features for request in batch)
        try:
            scored = self.engine.score_uint8_with_embeddings(images, local_features=local)
        except Exception as exc:  # noqa: BLE001  every caller of this batch hears it
            for request in batch:
                request.done.set_exception(exc)
            return
        self.batches += 1
        start = 0
        for request in batch:
            rows = slice(start, start + len(request.images))
            request.done.set_result(scored.rows(rows, local_features=request.local_features))
            start += len(request.images)


@dataclass(frozen=True)
class _Request:
    images: list[np.ndarray]
    local_features: bool
    done: Future[EmbeddedScores]
