"""One input file to its 320x320 canvas (read, eligibility, 8-bit conversion, step A), and the
executors that do this beside the model.

Threads (the default) suit uncompressed input, whose preparation (numpy look-ups, Pillow
resampling) releases the GIL, and imagecodecs' decoders (ml.decoders), which release it too:
with two threads the JPEG-LS pipeline ran 1.2-1.4x as fast as with one on 2 cores. pydicom's
own decoder plugins (the fallback) hold the GIL for their whole call (0.1-1 s per radiograph).
Spawned processes decode in parallel whatever the decoder; on the 2 shared cores of the
development machine that gained nothing measurable, on more cores it is what scales.
Processes need the same care as any spawn-based pool: the caller's main module must be
import-safe (`if __name__ == "__main__":`). This module is torch-free so that they start
without torch (1.7 s and ~470 MB each).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool as BrokenExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml.dicom_image import (
    Conversion,
    ImageReadError,
    check_eligibility,
    check_pixel_data,
    pixel_source,
    read_bitmap_uint8,
    read_dataset,
    scoring_uint8,
    sniff_kind,
    stream_size,
)
from ml.preprocess import ImageShapeError, to_canvas

log = logging.getLogger(__name__)

PREPARE_MODES = ("threads", "processes")


@dataclass(frozen=True)
class PreparedImage:
    """One input after decoding and step A: the 320x320 canvas, or why there is none."""

    path: str
    canvas: np.ndarray | None
    skipped_reason: str | None
    flags: tuple[str, ...] = ()


def prepare_file(
    path: str | Path, conversion: Conversion = "equalize", reduced: bool = False
) -> PreparedImage:
    """Read, check eligibility, convert to 8 bits and place on the 320 canvas (step A).
    `reduced`: JPEG 2000 and baseline JPEG may be decoded at reduced resolution
    (ml.dicom_image.scoring_uint8)."""
    path = Path(path)
    try:
        if not path.is_file():
            return PreparedImage(str(path), None, "file not found")
        if sniff_kind(path) in ("png", "jpeg"):
            return PreparedImage(str(path), to_canvas(read_bitmap_uint8(path)), None)
        ds = read_dataset(path)
        eligibility = check_eligibility(ds)
        if not eligibility.eligible:
            return PreparedImage(str(path), None, eligibility.reason, eligibility.flags)
        check_pixel_data(ds, stream_size(ds, path), single_frame_grey=False, path=path)
        image, _ = scoring_uint8(ds, pixel_source(ds, path), conversion, reduced=reduced)
        return PreparedImage(str(path), to_canvas(image), None, eligibility.flags)
    except (ImageReadError, ImageShapeError) as exc:
        return PreparedImage(str(path), None, f"unreadable: {str(exc).removeprefix(f'{path}: ')}")
    except Exception as exc:  # one bad file must not stop a batch; it is recorded and logged
        log.exception("image preparation failed", extra={"path": str(path)})
        return PreparedImage(str(path), None, f"failed: {type(exc).__name__}: {exc}")


def default_workers() -> int:
    """Half the CPU cores, at least 2 and at most 8. Two on a 2-core machine: the first batch's
    preparation, which nothing overlaps, then takes half as long, and the decoders release the
    GIL (bench/inference.py's rates, 1 and 2 workers interleaved in one run, two repeats, on a
    shared 2-core machine: uncompressed 7.7/8.4 -> 9.6/9.8 images/s, fill 1.0/0.9 -> 0.5 s;
    JPEG-LS 3.6/3.6 -> 5.1/4.2 images/s; the model alone about 14.5/s)."""
    return min(8, max(2, (os.cpu_count() or 2) // 2))


class Preparer:
    """Prepares files beside the model, in order, in a persistent pool of threads or of spawned
    processes (never forked: the parent holds torch's thread pools).

    Processes start once (about a second) and are reused by later calls until `close()`. If a
    decoder crashes its process, the pool breaks: the image at the head of the queue is reported
    failed (the crash happened while it was in flight; it may or may not be the culprit), the
    pool restarts and the other images in flight are prepared again. Nothing is dropped.
    """

    def __init__(
        self,
        mode: str = "threads",
        workers: int | None = None,
        *,
        reduced: bool = False,
        prepare: Callable[[str, Conversion, bool], PreparedImage] = prepare_file,
    ) -> None:
        if mode not in PREPARE_MODES:
            known = ", ".join(PREPARE_MODES)
            raise ValueError(f"prepare mode must be one of {known}, got {mode!r}")
        self.mode = mode
        self.workers = workers or default_workers()
        self.reduced = reduced  # passed to `prepare` (ml.dicom_image.scoring_uint8)
        self.prepare = prepare  # module-level (processes pickle it); bench/ swaps in the old path
        self._executor: Executor | None = None

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.mode == "threads":
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="prepare")
            else:
                context = multiprocessing.get_context("spawn")
                self._executor = ProcessPoolExecutor(self.workers, mp_context=context)
        return self._executor

    def in_order(
        self, paths: Iterable[str | Path], conversion: Conversion, ahead: int
    ) -> Iterator[PreparedImage]:
        """Prepared images in input order, keeping `ahead` preparations in flight."""
        pending: deque[tuple[str, Future[PreparedImage]]] = deque()
        source = (str(p) for p in paths)

        def submit(path: str) -> None:
            pending.append((path, self._pool().submit(self.prepare, path, conversion, self.reduced)))

        for path in source:
            submit(path)
            if len(pending) >= ahead:
                break
        while pending:
            path, future = pending.popleft()
            try:
                done = future.result()
            except BrokenExecutor:
                log.error("a preparing process died; restarting the pool", extra={"path": path})
                done = PreparedImage(
                    path, None, "failed: a decoding process crashed while this image was in flight"
                )
                retry = [p for p, _ in pending]
                pending.clear()
                self.close()
                for again in retry:
                    submit(again)
            following = next(source, None)
            if following is not None:
                submit(following)
            yield done

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
