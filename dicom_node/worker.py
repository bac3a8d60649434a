"""The inference worker: claims QUEUED studies, scores their eligible images, records a Result,
writes the SR to the outbox and queues its deliveries (the sender starts on it at once), then
does the same for the summary image, the text report and the attention-map overlays of the
findings called present (`[worker] heat_maps_per_study`) and finishes the study.

Study-level probability: the mean (default) or max over the study's eligible frontal images of
each image's probability, per finding (`[worker] study_aggregation`); every image's own scores
are kept with the result. The active threshold profile is read once per study, so activating a
new one changes the next study's decisions without a restart.

Failures never block the queue: a study whose processing raised goes back to QUEUED (with
attempts + 1, not claimed again before a doubling `[worklist] retry_delay_seconds` backoff) or
ends FAILED after `max_attempts`, or at once when retrying cannot help
(`dicom_node.failures.is_permanent`: a build error, a spool file that is gone or is not DICOM).
A study without any eligible image ends SKIPPED with the reasons and, with `[worker]
report_skipped`, a "not analysed" SR, summary image and text report for the same destinations; a later
findings SR for the study names it as its predecessor.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
from pydicom import Dataset
from pydicom.uid import ComprehensiveSRStorage, EnhancedSRStorage, SecondaryCaptureImageStorage

from dicom_node.assembler import Assembler
from dicom_node.failures import describe, is_permanent
from dicom_node.heartbeat import (
    LOADED,
    LOADING,
    SWEEPS_PER_STALE_AGE,
    Heartbeat,
    lease_stale_after_seconds,
    model_failure,
)
from dicom_node.logs import log_event
from dicom_node.reporting.content import AlgorithmInfo, FindingOutcome, ImageUse
from dicom_node.reporting.evidence import tolerant_headers
from dicom_node.reporting.heatmap import ranked_positives
from dicom_node.reporting.outbox import (
    HEATMAP,
    SR,
    SUMMARY,
    TEXT,
    WrittenObject,
    write_heatmap,
    write_not_analysed,
    write_sr,
    write_summary,
    write_text_report,
)
from dicom_node.reporting.sr import PreviousReport
from dicom_node.reporting.uids import (
    SUMMARY_SERIES_NUMBER,
    TEXT_REPORT_SERIES_NUMBER,
    InstanceUids,
    ReportUids,
    ResultKey,
    derived_uid,
    heatmap_uids,
    report_uids,
)
from dicom_node.settings import DestinationSettings, Settings
from storage import heartbeat as heartbeats
from storage import outbound, profiles, results, worklist
from storage.db import Database, is_unavailable
from storage.spool import Spool
from storage.states import LeaseLost, StudyState

if TYPE_CHECKING:
    from ml.engine import EmbeddedScores

LOG = logging.getLogger(__name__)
MODEL_RETRY_SECONDS = 30
PAUSE_MAX_SECONDS = 5.0  # longest wait between tries while the database is unreachable


@dataclass(frozen=True)
class WorkOutcome:
    study_instance_uid: str
    state: StudyState | None  # None: the lease was lost and another worker owns the study
    result_id: int | None = None
    version: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ModelState:
    """What a worker's model is doing: "loading" (not loaded yet), "loaded", or "missing" /
    "corrupt" / "failed" with the reason (loading is tried again every MODEL_RETRY_SECONDS)."""

    state: str
    detail: str = ""

    @property
    def loaded(self) -> bool:
        return self.state == "loaded"


@dataclass
class LoadedModel:
    engine: Any  # ml.engine.ZeroShotEngine: .identity, .labels, .score_uint8_with_embeddings
    catalogue: Any  # ml.catalogue.Catalogue


@dataclass
class _Image:
    sop_instance_uid: str
    dataset: Dataset | None
    reason: str | None  # None: eligible and decoded
    pixels: np.ndarray | None = None
    flags: tuple[str, ...] = ()  # e.g. view_position_missing, view_from_view_code_sequence


def load_model(settings: Settings) -> LoadedModel:
    """The configured checkpoints and the node's findings catalogue: the findings file plus
    the findings added from the workbench (seconds: done once per process)."""
    from dicom_node.findings import node_catalogue_from_url
    from ml.engine import ZeroShotEngine

    model = settings.model
    if not model.checkpoints:
        raise ValueError("model.checkpoints is empty: configure at least one checkpoint")
    catalogue = node_catalogue_from_url(settings)
    engine = ZeroShotEngine(
        [settings.resolve(path) for path in model.checkpoints],
        catalogue,
        device=model.device,
        cpu_threads=model.cpu_threads,
        batch_size=model.batch_size,
        name=model.name,
        prepare_reduced=model.reduced_resolution,
    )
    return LoadedModel(engine=engine, catalogue=catalogue)


def aggregate(probabilities: np.ndarray, rule: str) -> np.ndarray:
    """(images, findings) -> (findings,): the study-level probability of each finding."""
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError(f"probabilities: expected (images, findings), got {probabilities.shape}")
    if rule == "mean":
        return probabilities.mean(axis=0)
    if rule == "max":
        return probabilities.max(axis=0)
    raise ValueError(f"rule: unknown aggregation {rule!r} (mean | max)")


def _with_derived(study_scores: np.ndarray, model: LoadedModel) -> np.ndarray:
    """The study's derived scores (No Finding) made again from its aggregated scores: 1 - the
    highest study-level score, not the mean of the images' own derived scores."""
    from ml.catalogue import apply_derived

    return apply_derived(study_scores[None], model.engine.labels, model.catalogue)[0]


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident():x}"


class Worker:
    """A node component (`start`/`stop`/`wake`), or driven directly with `run_once()`."""

    name = "worker"

    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        spool: Spool,
        outbox: Spool,
        clock: Callable[[], datetime],
        model_loader: Callable[[Settings], LoadedModel] = load_model,
        on_result: Callable[[], None] = lambda: None,
        assembler: Assembler | None = None,
        worker_id: str | None = None,
        on_model_state: Callable[[], None] = lambda: None,
        on_inference: Callable[[float], None] = lambda seconds: None,
        on_findings: Callable[[Sequence[FindingOutcome]], None] = lambda findings: None,
        first_in_process: bool = True,
    ) -> None:
        self.settings = settings
        # False for the 2nd..Nth worker of `worker --concurrency N`: starting, it must not
        # take back leases its siblings already hold
        self.first_in_process = first_in_process
        self.database = database
        self.spool = spool
        self.outbox = outbox
        self.clock = clock
        self.model_loader = model_loader
        self.on_result = on_result
        self.on_inference = on_inference  # model seconds, once per study scored
        self.on_findings = on_findings  # the study-level findings of each new result
        self.assembler = assembler  # standalone: this worker also queues and sweeps
        self.worker_id = worker_id or default_worker_id()
        self.node_uid = derived_uid("device-observer", settings.node.ae_title)
        self._model: LoadedModel | None = None
        self._model_status: tuple[str, str | None] = (LOADING, None)
        self.on_model_state = on_model_state  # e.g. the heartbeat, to report it at once
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused_since: float | None = None  # monotonic time the database went away
        self._pause_seconds = 0.0
        self._reachable_since = time.monotonic()  # since when the database answers us
        self._next_sweep = 0.0  # monotonic time to look for leases of gone workers again

    # -- component life cycle ---------------------------------------------------------------

    def start(self) -> None:
        self.release_gone_leases(starting=self.first_in_process)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="worker", daemon=True)
        self._thread.start()

    def release_gone_leases(self, starting: bool = False) -> int:
        """Studies leased to a worker whose process is gone go back to the queue at once
        instead of after `lease_seconds`, attempts + 1 as for an expired lease: a worker of
        this host whose process no longer runs (a kill -9 mid-study), or a worker on any host
        whose heartbeat is `lease_stale_after_seconds` old. The heartbeat rule waits until this
        worker itself has reached the database for that long (after an outage every row is
        old until its process beats again). `starting`: also this process's own leases (left
        by an earlier process with the same pid, e.g. in a container). Returns how many."""
        from dicom_node.processes import gone_holders, stale_holders

        host, pid, now = socket.gethostname(), os.getpid(), self.clock()
        stale_after = lease_stale_after_seconds(self.settings.node.heartbeat_seconds)
        judge_beats = time.monotonic() - self._reachable_since >= stale_after
        with self.database.sessions.begin() as session:
            holders = worklist.lease_holders(session)
            gone = set(gone_holders(holders, host, pid, starting))
            if judge_beats and len(gone) < len(holders):
                gone |= set(stale_holders(holders, heartbeats.last_beats(session),
                                          now - timedelta(seconds=stale_after), pid, host))
            swept = worklist.release_leases(session, sorted(gone), now,
                                            self.settings.worklist.max_attempts)
        self._next_sweep = time.monotonic() + stale_after / SWEEPS_PER_STALE_AGE
        for outcome in swept:
            log_event(LOG, "lease_released", level=logging.WARNING,
                      study_instance_uid=outcome.study_instance_uid, state=outcome.state.value,
                      attempts=outcome.attempts)
        if swept:
            self._wake.set()
        return len(swept)

    def stop(self) -> None:
        """Claim nothing more; wait for the study in progress up to `[worker]
        shutdown_grace_seconds`, then give its lease back (QUEUED, no attempt counted) so the
        next start takes it at once. The unfinished pass keeps running until the process exits;
        its writes then fail as a lost lease and change nothing."""
        self._stop.set()
        self._wake.set()
        if self._thread is None:
            return
        self._thread.join(timeout=self.settings.worker.shutdown_grace_seconds)
        if self._thread.is_alive():
            with self.database.sessions.begin() as session:
                returned = worklist.give_back(session, self.worker_id, self.clock())
            for uid in returned:
                log_event(LOG, "lease_given_back", level=logging.WARNING, study_instance_uid=uid,
                          grace_seconds=self.settings.worker.shutdown_grace_seconds)
        self._thread = None

    def wake(self, *_: object) -> None:
        """Called when a study became QUEUED (accepts the service's callback arguments)."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.model()
            except Exception as exc:  # noqa: BLE001  e.g. checkpoint not there yet: studies wait
                log_event(LOG, "model_unavailable", level=logging.ERROR,
                          model=self.settings.model.name, error=f"{type(exc).__name__}: {exc}",
                          retry_in_seconds=MODEL_RETRY_SECONDS)
                self._stop.wait(timeout=MODEL_RETRY_SECONDS)
                continue
            try:
                self._resume_if_paused()
                if self.run_once() is not None:
                    continue
                wait = self.settings.worker.poll_interval_seconds
            except Exception as exc:  # noqa: BLE001  database busy, disk full, ...: try again
                wait = self._pause(exc) if is_unavailable(exc) else 1.0
                if not is_unavailable(exc):
                    log_event(LOG, "worker_pass_failed", level=logging.ERROR, exc_info=True)
            self._wake.wait(timeout=wait)

    def _pause(self, exc: BaseException) -> float:
        """The database is unreachable: log it once, then wait (1, 2, 4 s, at most
        PAUSE_MAX_SECONDS) before the next try; nothing is claimed meanwhile."""
        if self._paused_since is None:
            self._paused_since = time.monotonic()
            log_event(LOG, "worker_paused", level=logging.WARNING, worker_id=self.worker_id,
                      error=describe(exc)[:300])
        self._pause_seconds = min(max(self._pause_seconds * 2, 1.0), PAUSE_MAX_SECONDS)
        return self._pause_seconds

    def _resume_if_paused(self) -> None:
        """After an outage: the study this worker held when the database went away goes back
        to the queue (no attempt counted: the study did nothing wrong), then work goes on."""
        if self._paused_since is None:
            return
        with self.database.sessions.begin() as session:  # raises while still unreachable
            returned = worklist.give_back(session, self.worker_id, self.clock())
        log_event(LOG, "worker_resumed", worker_id=self.worker_id, studies_requeued=returned,
                  paused_seconds=round(time.monotonic() - self._paused_since, 1))
        self._paused_since, self._pause_seconds = None, 0.0
        self._reachable_since = time.monotonic()

    # -- one study --------------------------------------------------------------------------

    @property
    def model_state(self) -> ModelState:
        """`model_status()` as a ModelState, readable from any thread (for /readyz)."""
        state, reason = self._model_status
        return ModelState(state, reason or self.settings.model.name)

    def model(self) -> LoadedModel:
        """The loaded model (loaded on first use); loading errors propagate and are kept as
        `model_status()` (missing / corrupt / failed with the reason)."""
        if self._model is None:
            self._set_model_status((LOADING, None))
            try:
                self._model = self.model_loader(self.settings)
            except Exception as exc:
                self._set_model_status(model_failure(exc))
                raise
            self._set_model_status((LOADED, None))
            log_event(LOG, "model_loaded", model=self.settings.model.name,
                      checkpoints=list(self._model.engine.identity.checkpoint_sha256s))
        return self._model

    def model_status(self) -> tuple[str, str | None]:
        """(loading | loaded | missing | corrupt | failed, the reason when not loaded)."""
        return self._model_status

    def _set_model_status(self, status: tuple[str, str | None]) -> None:
        changed = status != self._model_status
        self._model_status = status
        if changed:
            self.on_model_state()

    def run_once(self) -> WorkOutcome | None:
        """Claim and process one study; None when the queue is empty."""
        if self.assembler is not None:
            self.assembler.tick()
        model = self.model()  # before claiming: without a model, studies stay QUEUED
        if self._stop.is_set():  # shutdown began while the model loaded: claim nothing
            return None
        if time.monotonic() >= self._next_sweep:
            self.release_gone_leases()
        now = self.clock()
        with self.database.sessions.begin() as session:
            claimed = worklist.claim_next(
                session, self.worker_id, self.settings.worklist.lease_seconds, now
            )
        if claimed is None:
            return None
        log_event(LOG, "study_claimed", study_instance_uid=claimed.study_instance_uid,
                  instances=len(claimed.instances), attempts=claimed.attempts)
        try:
            return self._process(claimed, model)
        except LeaseLost as exc:
            log_event(LOG, "lease_lost", level=logging.WARNING,
                      study_instance_uid=claimed.study_instance_uid, error=str(exc))
            return WorkOutcome(claimed.study_instance_uid, None)
        except Exception as exc:  # recorded on the study, retried or FAILED
            if is_unavailable(exc):
                raise  # the study did nothing wrong: the worker pauses, its lease is given back
            return self._fail(claimed, exc)

    def _fail(self, claimed: worklist.ClaimedStudy, exc: Exception) -> WorkOutcome:
        """Record the failed attempt: FAILED at once when retrying cannot help, else QUEUED
        again (or FAILED after max_attempts); the reason is the error, values redacted."""
        error, permanent = describe(exc), is_permanent(exc)
        try:
            with self.database.sessions.begin() as session:
                state = worklist.fail(
                    session, claimed.study_id, self.worker_id, error, self.clock(),
                    self.settings.worklist.max_attempts, permanent=permanent,
                    retry_delay_seconds=self.settings.worklist.retry_delay_seconds,
                    retry_max_delay_seconds=self.settings.worklist.retry_max_delay_seconds,
                )
        except LeaseLost:  # the lease expired meanwhile; whoever holds the study now decides
            log_event(LOG, "lease_lost", level=logging.WARNING, error=error,
                      study_instance_uid=claimed.study_instance_uid)
            return WorkOutcome(claimed.study_instance_uid, None, reason=error)
        retry_in = (worklist.retry_delay(claimed.attempts + 1,
                                         self.settings.worklist.retry_delay_seconds,
                                         self.settings.worklist.retry_max_delay_seconds)
                    if state is StudyState.QUEUED else None)
        log_event(LOG, "study_failed", level=logging.ERROR, exc_info=exc,
                  study_instance_uid=claimed.study_instance_uid, state=state.value, error=error,
                  permanent=permanent, retry_in_seconds=retry_in)
        return WorkOutcome(claimed.study_instance_uid, state, reason=error)

    def _process(self, claimed: worklist.ClaimedStudy, model: LoadedModel) -> WorkOutcome:
        started = time.perf_counter()
        images = self._read_images(claimed)
        eligible = [image for image in images if image.reason is None]
        if not eligible:
            return self._skip(claimed, model, images)
        read = time.perf_counter()
        scored = self._score(claimed, model, eligible)
        seconds = {"read": read - started, "score": time.perf_counter() - read}
        self.on_inference(seconds["score"])
        study_scores = _with_derived(
            aggregate(scored.probabilities, self.settings.worker.study_aggregation), model
        )
        return self._report(claimed, model, images, eligible, scored, study_scores, seconds)

    def _read_images(self, claimed: worklist.ClaimedStudy) -> list[_Image]:
        """Each instance's header (large values left on disk) and, when it is to be scored, its
        8-bit pixels; an image that cannot be scored gets the reason (ml.dicom_image)."""
        from ml.dicom_image import DEFER_SIZE, prepare_radiograph

        conversion = self.settings.model.dicom_conversion
        images = []
        for instance in claimed.instances:
            path = self.spool.absolute(instance.spool_path)
            ds = pydicom.dcmread(path, defer_size=DEFER_SIZE)
            read = prepare_radiograph(  # type: ignore[arg-type]
                ds, path, conversion, reduced=self.settings.model.reduced_resolution)
            images.append(
                _Image(instance.sop_instance_uid, ds, read.reason, read.pixels, read.flags)
            )
        return images

    def _score(
        self, claimed: worklist.ClaimedStudy, model: LoadedModel, eligible: Sequence[_Image]
    ) -> EmbeddedScores:
        """The eligible images' scores and embeddings and, when attention maps are to be made,
        their local features from the same forward pass."""
        from ml.engine import EmbeddedScores

        batch = self.settings.model.batch_size
        local = self.settings.worker.heat_maps_per_study > 0
        parts = []
        for start in range(0, len(eligible), batch):
            pixels = [image.pixels for image in eligible[start : start + batch]]
            parts.append(model.engine.score_uint8_with_embeddings(pixels, local_features=local))
            with self.database.sessions.begin() as session:
                worklist.renew_lease(session, claimed.study_id, self.worker_id,
                                     self.settings.worklist.lease_seconds, self.clock())
        return EmbeddedScores.stack(parts)

    def _skip(
        self, claimed: worklist.ClaimedStudy, model: LoadedModel, images: Sequence[_Image]
    ) -> WorkOutcome:
        """No eligible image: SKIPPED with the reasons, and with `report_skipped` a "not
        analysed" SR and summary image queued for the destinations (one commit)."""
        from ml.dicom_image import is_chest_radiograph, states_chest

        reason = _skip_reason(images)
        evidence = [image.dataset for image in images if image.dataset is not None]
        if not self.settings.worker.report_skipped or not any(map(is_chest_radiograph, evidence)):
            return self._skip_silently(claimed, reason, bool(evidence))
        algorithm = self._algorithm(model, "")
        with self.database.sessions.begin() as session:
            previous = results.latest_result(session, claimed.study_id)
        if (previous is not None and not claimed.reprocess
                and _same_not_analysed(previous, images, algorithm, reason)):
            stored = _stored_objects(self.outbox, previous)
            return self._finish_skipped(claimed, previous.id, stored, reason, previous.version,
                                        self.clock())
        key = ResultKey.of(
            study_instance_uid=claimed.study_instance_uid, model_name=algorithm.name,
            checkpoint_sha256s=algorithm.checkpoint_sha256s,
            catalogue_version=algorithm.catalogue_version, profile="",
            source_sop_instance_uids=[image.sop_instance_uid for image in images],
            supersedes=previous.sr_sop_instance_uid if previous else "", not_analysed=reason,
        )
        version = 1 if previous is None else previous.version + 1
        uids = report_uids(key, version=version, labels=[])
        now = self.clock()
        written = write_not_analysed(
            self.outbox, evidence=tolerant_headers(evidence), reasons=[reason],
            algorithm=algorithm, uids=uids, node_uid=self.node_uid,
            previous=_previous_reports(previous), when=now, chest=any(map(states_chest, evidence)),
            images=_image_uses(images), previous_text=_previous_text_reports(previous),
        )
        new = self._new_result(claimed, key, version, previous, algorithm, None, uids, [],
                               _image_records(images, [], np.empty((0, 0)), {}, []))
        return self._finish_skipped(claimed, new, written, reason, version, now)

    def _skip_silently(self, claimed: worklist.ClaimedStudy, reason: str, read: bool) -> WorkOutcome:
        """SKIPPED with nothing sent: `report_skipped` is off, no image could be read, or
        (`read`) none is a CR/DX of the chest or of an unstated region, so the study is not one
        the node was expected to analyse (an extremity study routed here gets no result)."""
        with self.database.sessions.begin() as session:
            state = worklist.skip(session, claimed.study_id, self.worker_id, reason, self.clock())
        unsent = ("report_skipped is false" if not self.settings.worker.report_skipped
                  else "no CR/DX image of the chest" if read else "no readable image")
        log_event(LOG, "study_skipped", study_instance_uid=claimed.study_instance_uid,
                  state=state.value, reason=reason, not_reported=unsent)
        return WorkOutcome(claimed.study_instance_uid, state, reason=reason)

    def _finish_skipped(
        self,
        claimed: worklist.ClaimedStudy,
        result: int | results.NewResult,
        objects: Sequence[WrittenObject],
        reason: str,
        version: int,
        now: datetime,
    ) -> WorkOutcome:
        """In one commit: record `result` (or take the id of a stored one whose inputs did not
        change), queue its not-analysed objects and finish the study SKIPPED."""
        with self.database.sessions.begin() as session:
            if isinstance(result, int):
                result_id = result
            else:
                result_id = results.add_result(session, result, now)
            queued = outbound.enqueue(session, result_id, self._deliveries(objects), now)
            state = worklist.skip(session, claimed.study_id, self.worker_id, reason, now)
        if queued:
            self.on_result()
        sr = next(obj.sop_instance_uid for obj in objects if obj.kind == SR)
        log_event(LOG, "study_skipped", study_instance_uid=claimed.study_instance_uid,
                  state=state.value, reason=reason, version=version, sr_sop_instance_uid=sr,
                  deliveries=queued)
        return WorkOutcome(claimed.study_instance_uid, state, result_id, version, reason)

    def _report(
        self,
        claimed: worklist.ClaimedStudy,
        model: LoadedModel,
        images: Sequence[_Image],
        eligible: Sequence[_Image],
        scored: EmbeddedScores,
        study_scores: np.ndarray,
        seconds: dict[str, float],
    ) -> WorkOutcome:
        """Record the result and send the SR first: its outbound row commits (and the sender is
        woken) before the summary image and the text report are built, which follow in a second
        commit that also finishes the study. A crash between the two leaves the study leased;
        whoever takes it next finds the same inputs and `_redeliver` builds the missing ones."""
        catalogue, labels = model.catalogue, list(model.engine.labels)
        defaults = {f.label: f.default_threshold for f in catalogue.enabled()}
        with self.database.sessions.begin() as session:
            profile = profiles.active_profile(session, defaults)
            previous = results.latest_result(session, claimed.study_id)
        findings = [
            FindingOutcome.from_catalogue(
                catalogue.by_label(label), p, profile.threshold_for(label, defaults[label])
            )
            for label, p in zip(labels, study_scores, strict=True)
        ]
        algorithm = self._algorithm(model, profile.label)
        key = self._key(claimed, algorithm, eligible, previous)
        # One tolerant copy (and one log line per image with values it emptied) for both objects.
        evidence = tolerant_headers([image.dataset for image in eligible if image.dataset])
        if (previous is not None and previous.analysed and not claimed.reprocess
                and key.same_inputs(self._previous_key(previous))):
            return self._redeliver(claimed, previous, evidence, algorithm, catalogue)
        version = 1 if previous is None else previous.version + 1
        uids = report_uids(key, version=version, labels=labels)
        now, mark = self.clock(), time.perf_counter()
        sr = write_sr(self.outbox, evidence=evidence, findings=findings, algorithm=algorithm,
                      uids=uids, node_uid=self.node_uid, previous=_previous_reports(previous),
                      when=now)
        new = self._new_result(claimed, key, version, previous, algorithm, profile.version, uids,
                               findings, _image_records(images, eligible, scored.probabilities,
                                                        scored.embeddings, labels))
        with self.database.sessions.begin() as session:
            worklist.renew_lease(session, claimed.study_id, self.worker_id,
                                 self.settings.worklist.lease_seconds, now)
            result_id = results.add_result(session, new, now)
            queued = outbound.enqueue(session, result_id, self._deliveries([sr]), now)
        if queued:
            self.on_result()
        seconds["sr"], mark = time.perf_counter() - mark, time.perf_counter()
        log_event(LOG, "sr_queued", study_instance_uid=claimed.study_instance_uid,
                  sr_sop_instance_uid=uids.sr.sop_instance_uid, deliveries=queued)
        uses = _image_uses(images)
        summary = write_summary(self.outbox, evidence=evidence, findings=findings,
                                algorithm=algorithm, uids=uids.summary, when=now, images=uses)
        text = write_text_report(self.outbox, evidence=evidence, findings=findings,
                                 algorithm=algorithm, uids=uids.text, node_uid=self.node_uid,
                                 previous=_previous_text_reports(previous), when=now, images=uses)
        seconds["summary"], mark = time.perf_counter() - mark, time.perf_counter()
        overlays = self._heat_maps(claimed, model, eligible, evidence, scored, findings,
                                   algorithm, key, version, now)
        state, more = self._finish(claimed, result_id, [summary, text, *overlays])
        seconds["heat_maps"] = time.perf_counter() - mark
        self.on_findings(findings)
        log_event(LOG, "study_reported", study_instance_uid=claimed.study_instance_uid,
                  state=state.value, version=version, profile=profile.label,
                  sr_sop_instance_uid=uids.sr.sop_instance_uid, deliveries=queued + more,
                  present=[f.label for f in findings if f.present],
                  seconds={k: round(v, 4) for k, v in seconds.items()})
        return WorkOutcome(claimed.study_instance_uid, state, result_id, version)

    def _heat_maps(
        self,
        claimed: worklist.ClaimedStudy,
        model: LoadedModel,
        eligible: Sequence[_Image],
        evidence: Sequence[Dataset],
        scored: EmbeddedScores,
        findings: Sequence[FindingOutcome],
        algorithm: AlgorithmInfo,
        key: ResultKey,
        version: int,
        when: datetime,
    ) -> list[WrittenObject]:
        """Attention-map overlays for the top `[worker] heat_maps_per_study` findings called
        present, each on the image that scored it highest. An extra: if making them fails, the
        study still finishes with its SR and summary (logged as heat_maps_failed). The maps
        come from the local features kept while scoring (no second forward pass), made at the
        overlay's size; each image is shrunk to it once, however many findings it shows."""
        chosen = ranked_positives(findings, self.settings.worker.heat_maps_per_study)
        if not chosen:
            return []
        try:
            uids = heatmap_uids(key.digest(), claimed.study_instance_uid, algorithm.name,
                                version=version, labels=[f.label for f in chosen])
            labels = list(model.engine.labels)
            scores = scored.probabilities
            best = {f.label: int(np.argmax(scores[:, labels.index(f.label)])) for f in chosen}
            shown: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # label -> (grey, heat)
            for index in sorted(set(best.values())):
                wanted = [label for label, i in best.items() if i == index]
                kept = scored.rows(slice(index, index + 1)).local_features
                shown.update(_image_heat_maps(model, eligible[index].pixels, wanted, kept))
            return [
                write_heatmap(self.outbox, source=evidence[best[f.label]],
                              pixels=shown[f.label][0], heat=shown[f.label][1],
                              finding=f, algorithm=algorithm, uids=uids[f.label], when=when)
                for f in chosen
            ]
        except Exception as exc:  # noqa: BLE001  an optional extra must not fail the study
            log_event(LOG, "heat_maps_failed", level=logging.ERROR, exc_info=exc,
                      study_instance_uid=claimed.study_instance_uid,
                      error=f"{type(exc).__name__}: {exc}")
            return []

    def _finish(
        self, claimed: worklist.ClaimedStudy, result_id: int, objects: Sequence[WrittenObject]
    ) -> tuple[StudyState, int]:
        """Queue `objects` for the result, finish the study and wake the sender if needed."""
        now = self.clock()
        with self.database.sessions.begin() as session:
            queued = outbound.enqueue(session, result_id, self._deliveries(objects), now)
            state = worklist.complete(session, claimed.study_id, self.worker_id, now)
        if queued:
            self.on_result()
        return state, queued

    def _new_result(
        self,
        claimed: worklist.ClaimedStudy,
        key: ResultKey,
        version: int,
        previous: results.ResultView | None,
        algorithm: AlgorithmInfo,
        profile_version: int | None,
        uids: ReportUids,
        findings: Sequence[FindingOutcome],
        images: tuple[results.ImageRecord, ...],
    ) -> results.NewResult:
        return results.NewResult(
            study_id=claimed.study_id, study_instance_uid=claimed.study_instance_uid,
            result_key=key.digest(), version=version,
            supersedes_id=previous.id if previous else None, worker_id=self.worker_id,
            model_name=algorithm.name, checkpoint_sha256s=algorithm.checkpoint_sha256s,
            catalogue_version=algorithm.catalogue_version,
            clinical_use=algorithm.clinical_use, profile_version=profile_version,
            aggregation=key.aggregation,
            sr_series_instance_uid=uids.sr.series_instance_uid,
            sr_sop_instance_uid=uids.sr.sop_instance_uid,
            summary_series_instance_uid=uids.summary.series_instance_uid,
            summary_sop_instance_uid=uids.summary.sop_instance_uid,
            text_series_instance_uid=uids.text.series_instance_uid,
            text_sop_instance_uid=uids.text.sop_instance_uid,
            findings=tuple(
                results.FindingRecord(f.label, f.probability, f.threshold, f.present,
                                      f.derivation)
                for f in findings
            ),
            images=images,
        )

    def _redeliver(
        self,
        claimed: worklist.ClaimedStudy,
        previous: results.ResultView,
        evidence: Sequence[Dataset],
        algorithm: AlgorithmInfo,
        catalogue: Any,
    ) -> WorkOutcome:
        """Nothing changed since the study's last result (same images, model and profile):
        finish with that result; destinations added since then get it queued, and a summary
        image or text report that a crash kept from being written is built now from the stored
        findings."""
        self._restore_missing(previous, evidence, algorithm, catalogue)
        objects = _stored_objects(self.outbox, previous)
        state, queued = self._finish(claimed, previous.id, objects)
        log_event(LOG, "study_unchanged", study_instance_uid=claimed.study_instance_uid,
                  state=state.value, version=previous.version, deliveries=queued)
        return WorkOutcome(claimed.study_instance_uid, state, previous.id, previous.version)

    def _restore_missing(
        self,
        previous: results.ResultView,
        evidence: Sequence[Dataset],
        algorithm: AlgorithmInfo,
        catalogue: Any,
    ) -> None:
        study = previous.study_instance_uid
        summary_missing = not self.outbox.exists(study, previous.summary_sop_instance_uid)
        text_missing = bool(previous.text_sop_instance_uid) and not self.outbox.exists(
            study, str(previous.text_sop_instance_uid))
        if not (summary_missing or text_missing):
            return
        findings = [
            FindingOutcome.from_catalogue(catalogue.by_label(f.label), f.probability, f.threshold)
            for f in previous.findings
        ]
        uses = _recorded_uses(previous, evidence)
        if summary_missing:
            uids = InstanceUids(previous.summary_series_instance_uid,
                                previous.summary_sop_instance_uid, SUMMARY_SERIES_NUMBER,
                                previous.version)
            write_summary(self.outbox, evidence=evidence, findings=findings, algorithm=algorithm,
                          uids=uids, when=previous.created_at, images=uses)
            log_event(LOG, "summary_restored", study_instance_uid=study,
                      sop_instance_uid=previous.summary_sop_instance_uid, version=previous.version)
        if text_missing:
            uids = InstanceUids(str(previous.text_series_instance_uid),
                                str(previous.text_sop_instance_uid), TEXT_REPORT_SERIES_NUMBER,
                                previous.version)
            with self.database.sessions.begin() as session:
                before = results.result_by_id(session, previous.supersedes_id)
            write_text_report(self.outbox, evidence=evidence, findings=findings,
                              algorithm=algorithm, uids=uids, node_uid=self.node_uid,
                              previous=_previous_text_reports(before), when=previous.created_at,
                              images=uses)
            log_event(LOG, "text_report_restored", study_instance_uid=study,
                      sop_instance_uid=previous.text_sop_instance_uid, version=previous.version)

    # -- helpers ----------------------------------------------------------------------------

    def _algorithm(self, model: LoadedModel, profile_label: str) -> AlgorithmInfo:
        settings = self.settings.model
        return AlgorithmInfo(
            name=settings.name,
            checkpoint_sha256s=tuple(model.engine.identity.checkpoint_sha256s),
            profile=profile_label,
            clinical_use=settings.clinical_use,
            caveat=settings.caveat,
            catalogue_version=model.catalogue.version,
            aggregation=self.settings.worker.study_aggregation,
            conversion=settings.dicom_conversion,
        )

    def _key(
        self,
        claimed: worklist.ClaimedStudy,
        algorithm: AlgorithmInfo,
        eligible: Sequence[_Image],
        previous: results.ResultView | None,
    ) -> ResultKey:
        return ResultKey.of(
            study_instance_uid=claimed.study_instance_uid,
            model_name=algorithm.name,
            checkpoint_sha256s=algorithm.checkpoint_sha256s,
            catalogue_version=algorithm.catalogue_version,
            aggregation=self.settings.worker.study_aggregation,
            profile=algorithm.profile,
            source_sop_instance_uids=[image.sop_instance_uid for image in eligible],
            supersedes=previous.sr_sop_instance_uid if previous else "",
        )

    @staticmethod
    def _previous_key(previous: results.ResultView) -> ResultKey:
        return ResultKey.of(
            study_instance_uid=previous.study_instance_uid,
            model_name=previous.model_name,
            checkpoint_sha256s=previous.checkpoint_sha256s,
            catalogue_version=previous.catalogue_version,
            aggregation=previous.aggregation,
            profile=f"v{previous.profile_version}",
            source_sop_instance_uids=[i.sop_instance_uid for i in previous.images if i.eligible],
        )

    def _deliveries(self, written: Sequence[WrittenObject]) -> list[outbound.NewDelivery]:
        return [
            outbound.NewDelivery(
                destination=destination.name, kind=obj.kind,
                study_instance_uid=obj.study_instance_uid, sop_instance_uid=obj.sop_instance_uid,
                sop_class_uid=obj.sop_class_uid, file_path=obj.relative_path,
            )
            for destination in self.settings.destinations
            for obj in written
            if _wants(destination, obj.kind)
        ]


def _wants(destination: DestinationSettings, kind: str) -> bool:
    wanted = {SR: destination.send_sr, SUMMARY: destination.send_summary,
              TEXT: destination.send_text_report, HEATMAP: destination.send_heat_maps}
    return wanted[kind]


def _image_heat_maps(
    model: LoadedModel, pixels: np.ndarray | None, labels: Sequence[str],
    local_features: dict[str, np.ndarray],
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each of `labels` on one scored 8-bit image: the image shrunk to the overlay's size
    (shared by all labels) and the engine's map at that size, from the image's kept local
    features (each checkpoint's (1, g, g, D)); with none kept, from a forward pass of its own."""
    from dicom_node.reporting.heatmap import fit_to_overlay
    from ml.heatmap import canvas_to_image
    from ml.preprocess import to_canvas

    if pixels is None:
        raise ValueError("the image has no decoded pixels")
    if local_features:
        canvas_maps = model.engine.maps_from_local(local_features, labels)[0]
    else:
        canvas_maps = model.engine.heat_maps(to_canvas(pixels)[None], labels)[0]
    grey = fit_to_overlay(pixels)
    return {label: (grey, canvas_to_image(m, pixels.shape, grey.shape))
            for label, m in zip(labels, canvas_maps, strict=True)}


def _stored_objects(outbox: Spool, previous: results.ResultView) -> list[WrittenObject]:
    """The SR, summary image, text report (when it has one) and attention-map overlays of a
    stored result, as written to the outbox (overlays only where their files exist: they are
    an extra)."""
    return _stored_reports(outbox, previous) + _stored_heat_maps(outbox, previous)


def _stored_heat_maps(outbox: Spool, previous: results.ResultView) -> list[WrittenObject]:
    labels = [f.label for f in previous.findings if f.present and not f.derivation]
    if not labels:
        return []
    uids = heatmap_uids(previous.result_key, previous.study_instance_uid, previous.model_name,
                        version=previous.version, labels=labels)
    return [
        WrittenObject(HEATMAP, previous.study_instance_uid, u.series_instance_uid,
                      u.sop_instance_uid, SecondaryCaptureImageStorage,
                      outbox.relative_path(previous.study_instance_uid, u.sop_instance_uid))
        for u in uids.values()
        if outbox.exists(previous.study_instance_uid, u.sop_instance_uid)
    ]


def _stored_reports(outbox: Spool, previous: results.ResultView) -> list[WrittenObject]:
    text = []
    if previous.text_series_instance_uid and previous.text_sop_instance_uid:
        text = [WrittenObject(TEXT, previous.study_instance_uid, previous.text_series_instance_uid,
                              previous.text_sop_instance_uid, EnhancedSRStorage,
                              outbox.relative_path(previous.study_instance_uid,
                                                   previous.text_sop_instance_uid))]
    return [
        WrittenObject(SR, previous.study_instance_uid, previous.sr_series_instance_uid,
                      previous.sr_sop_instance_uid, ComprehensiveSRStorage,
                      outbox.relative_path(previous.study_instance_uid,
                                           previous.sr_sop_instance_uid)),
        WrittenObject(SUMMARY, previous.study_instance_uid,
                      previous.summary_series_instance_uid, previous.summary_sop_instance_uid,
                      SecondaryCaptureImageStorage,
                      outbox.relative_path(previous.study_instance_uid,
                                           previous.summary_sop_instance_uid)),
        *text,
    ]


def _same_not_analysed(
    previous: results.ResultView, images: Sequence[_Image], algorithm: AlgorithmInfo, reason: str
) -> bool:
    """`previous` is a not-analysed result for these very instances, model and reason: making
    another would only repeat it."""
    return (
        not previous.analysed
        and previous.model_name == algorithm.name
        and previous.checkpoint_sha256s == algorithm.checkpoint_sha256s
        and sorted(i.sop_instance_uid for i in previous.images)
        == sorted(image.sop_instance_uid for image in images)
        and _reason_text([i.reason for i in previous.images]) == reason
    )


def _previous_reports(previous: results.ResultView | None) -> list[PreviousReport]:
    if previous is None:
        return []
    return [
        PreviousReport(
            previous.study_instance_uid,
            previous.sr_series_instance_uid,
            previous.sr_sop_instance_uid,
        )
    ]


def _previous_text_reports(previous: results.ResultView | None) -> list[PreviousReport]:
    """The text report a new one supersedes: the previous result's (none before it existed)."""
    if previous is None or not previous.text_sop_instance_uid:
        return []
    return [PreviousReport(previous.study_instance_uid, str(previous.text_series_instance_uid),
                           previous.text_sop_instance_uid, EnhancedSRStorage)]


def _image_uses(images: Sequence[_Image]) -> list[ImageUse]:
    """How the reports name the study's images: scored, or left out and why."""
    return [ImageUse(image.sop_instance_uid, image.reason is None, image.reason,
                     _view(image.dataset)) for image in images]


def _recorded_uses(previous: results.ResultView, evidence: Sequence[Dataset]) -> list[ImageUse]:
    """`_image_uses` from a stored result (views only known for the scored images' headers)."""
    views = {str(ds.SOPInstanceUID): _view(ds) for ds in evidence}
    return [ImageUse(i.sop_instance_uid, i.eligible, i.reason, views.get(i.sop_instance_uid, ""))
            for i in previous.images]


def _view(ds: Dataset | None) -> str:
    return "" if ds is None else str(ds.get("ViewPosition", "") or "").strip()


def _skip_reason(images: Sequence[_Image]) -> str:
    return _reason_text([image.reason for image in images])


def _reason_text(reasons: Sequence[str | None]) -> str:
    """Why a study was skipped, from the reason each of its images was not scored."""
    if not reasons:
        return "no instances"
    counts = Counter(reasons)
    parts = [f"{reason} (x{n})" if n > 1 else str(reason) for reason, n in counts.items()]
    return f"no eligible image among {len(reasons)}: " + "; ".join(parts)


def _image_records(
    images: Sequence[_Image],
    eligible: Sequence[_Image],
    scores: np.ndarray,
    embeddings: dict[str, np.ndarray],
    labels: Sequence[str],
) -> tuple[results.ImageRecord, ...]:
    row = {id(image): i for i, image in enumerate(eligible)}
    records = []
    for image in images:
        if id(image) in row:
            i = row[id(image)]
            values = zip(labels, scores[i], strict=True)
            scored = {label: round(float(p), 6) for label, p in values}
            vectors = {sha: e[i].astype("<f4").tobytes() for sha, e in embeddings.items()}
            records.append(results.ImageRecord(
                image.sop_instance_uid, True, None, scored, image.flags, vectors))
        else:
            records.append(results.ImageRecord(
                image.sop_instance_uid, False, image.reason, flags=image.flags))
    return tuple(records)


# -- wiring ---------------------------------------------------------------------------------


def outbox_for(settings: Settings) -> Spool:
    """Where built SRs and summary images wait for delivery: <shared_dir>/outbox/<study>/<sop>
    (shared_dir: data_dir unless configured)."""
    return Spool(settings.outbox_path)


def make_workers(
    settings: Settings,
    database: Database,
    clock: Callable[[], datetime],
    count: int,
    sender: Any = None,
) -> list[Worker]:
    """`count` standalone workers (each also assembles and sweeps) for `dicom-node worker`,
    sharing one loaded model: the checkpoint is read once and held once in memory (on a GPU,
    once on the device), and with count > 1 their images are scored together in batches of
    up to `[model] batch_size` (ml.batching). Raises what loading the model raises."""
    from dicom_node.assembler import Assembler
    from ml.batching import BatchingScorer

    loaded = load_model(settings)
    shared = loaded if count == 1 else LoadedModel(
        engine=BatchingScorer(loaded.engine, max_images=settings.model.batch_size),
        catalogue=loaded.catalogue)
    workers: list[Worker] = []
    for n in range(count):
        worker = Worker(
            settings=settings, database=database, spool=Spool(settings.spool_path),
            outbox=outbox_for(settings), clock=clock,
            assembler=Assembler(database, settings.worklist, clock),
            on_result=sender.wake if sender is not None else lambda: None,
            worker_id=f"{socket.gethostname()}:{os.getpid()}:w{n}",
            model_loader=lambda _settings: shared, first_in_process=n == 0,
        )
        worker.model()
        workers.append(worker)
    return workers


def make_sender(
    settings: Settings,
    database: Database,
    clock: Callable[[], datetime],
    on_delivery: Callable[[str, str], None] = lambda destination, outcome: None,
) -> Any:
    """The Sender for the configured destinations, or None when there are none."""
    from dicom_node.sender import Sender

    if not settings.destinations:
        return None
    return Sender(
        database=database, outbox_root=outbox_for(settings).root,
        destinations=settings.destinations, calling_ae=settings.node.ae_title,
        settings=settings.outbound, clock=clock, on_delivery=on_delivery,
        heartbeat_seconds=settings.node.heartbeat_seconds,
    )


def attach(service: Any) -> None:
    """Add the heartbeat, the worker (if `[worker] enabled`) and the sender (if destinations
    are configured) to a `dicom_node.service.Service`; a study becoming QUEUED wakes the worker at once and a
    new result wakes the sender."""
    settings = service.settings
    outbox = outbox_for(settings)
    outbox.prepare()
    heartbeat = Heartbeat(service.database, "serve", settings.node.heartbeat_seconds,
                          service.clock)
    service.add(heartbeat)  # first in, last out: it beats while everything else runs
    metrics = service.metrics
    sender = make_sender(settings, service.database, service.clock, metrics.delivery)
    if sender is not None:
        service.add(sender)
    worker: Worker | None = None
    if settings.worker.enabled:
        worker = Worker(
            settings=settings, database=service.database, spool=service.spool, outbox=outbox,
            clock=service.clock, on_result=sender.wake if sender is not None else lambda: None,
            on_model_state=heartbeat.wake,
            on_inference=metrics.inference, on_findings=metrics.findings,
        )
        heartbeat.model_status = worker.model_status
        service.add(worker)
        service.on_study_queued(worker.wake)
    _listen_for_wakeups(service, worker, sender)


def _listen_for_wakeups(service: Any, worker: Worker | None, sender: Any) -> None:
    """On PostgreSQL, studies queued and objects due on any host wake this process's worker
    and sender at once (LISTEN/NOTIFY); their polling stays as the fallback."""
    from dicom_node.wakeups import Wakeups
    from storage.wakeups import OUTBOUND, QUEUED

    if not Wakeups.supported(service.database) or (worker is None and sender is None):
        return
    wakeups = Wakeups(service.database)
    if worker is not None:
        wakeups.on(QUEUED, worker.wake)
    if sender is not None:
        wakeups.on(OUTBOUND, sender.wake)
    service.add(wakeups)
