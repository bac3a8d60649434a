"""The node's Prometheus metrics, in a CollectorRegistry owned by the service (never the global
default registry, so two nodes in one process, or two tests, never share a counter).

Events are counted where they happen, through callbacks the service hands to its parts (the
intake's `on_answered`, the worker's `on_inference`/`on_findings`, the sender's `on_delivery`);
the work list's state (studies by state, pending deliveries, free disk) is read at scrape time by
`WorkListCollector`. Label values are SOP class names, AE titles, destination names, finding
labels and status names: never a patient name, ID or any other value from a data set.

Metric names (Counters get `_total` appended by prometheus-client):
  dicom_node_instances_received_total{sop_class,calling_ae,status}
  dicom_node_inference_seconds (histogram: model time per study scored)
  dicom_node_findings_scored_total{finding}, dicom_node_findings_positive_total{finding},
  dicom_node_finding_positive_ratio{finding} (positive / scored since the process started)
  dicom_node_deliveries_total{destination,outcome}  outcome: sent, dead, retry, down, ...
  dicom_node_purged_studies_total{reason}, dicom_node_purged_bytes_total{reason}
  dicom_node_studies{state}, dicom_node_deliveries_pending{destination},
  dicom_node_oldest_pending_delivery_age_seconds{destination},
  dicom_node_free_disk_bytes, dicom_node_min_free_disk_bytes, dicom_node_worklist_reachable
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from pydicom.uid import UID

from dicom_node import status
from dicom_node.logs import log_event
from storage import outbound, worklist
from storage.db import Database
from storage.spool import Spool, is_valid_uid

LOG = logging.getLogger(__name__)
# Model seconds per study: a CPU ensemble takes ~0.1-5 s, a GPU much less, a big study more.
INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PURGE_REASONS = ("retention", "disk_pressure")
# An open node (no allow-list) hears whatever AE titles callers choose: beyond this many
# distinct ones, further titles are counted under "other" so the series stay bounded.
MAX_CALLING_AE_LABELS = 64
OTHER = "other"
UNKNOWN = "unknown"


class NodeMetrics:
    """Counters and histograms of one running node, and its registry for /metrics.

    The event methods are called from the listener's, worker's and sender's threads; they
    never raise (a metrics fault must not fail a C-STORE or a study)."""

    def __init__(self) -> None:
        # No `_created` series: they double /metrics and Prometheus has no use for them here.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        r = self.registry
        self.instances_received = Counter(
            "dicom_node_instances_received", "C-STORE requests answered, by SOP class name, "
            "calling AE title and the status answered", ["sop_class", "calling_ae", "status"],
            registry=r)
        self.inference_seconds = Histogram(
            "dicom_node_inference_seconds", "Model time to score one study's eligible images",
            buckets=INFERENCE_BUCKETS, registry=r)
        self.findings_scored = Counter(
            "dicom_node_findings_scored", "Study results that scored this finding", ["finding"],
            registry=r)
        self.findings_positive = Counter(
            "dicom_node_findings_positive", "Study results where this finding was present "
            "(probability at or above its threshold)", ["finding"], registry=r)
        self.finding_positive_ratio = Gauge(
            "dicom_node_finding_positive_ratio", "Share of study results with this finding "
            "present, since the process started", ["finding"], registry=r)
        self.deliveries = Counter(
            "dicom_node_deliveries", "Delivery attempts by destination and outcome (sent, dead, "
            "or the failure: retry, retry-limited, down, refusing)", ["destination", "outcome"],
            registry=r)
        self.purged_studies = Counter(
            "dicom_node_purged_studies", "Studies whose images and outbox objects were purged",
            ["reason"], registry=r)
        self.purged_bytes = Counter(
            "dicom_node_purged_bytes", "Bytes of spool and outbox files purged", ["reason"],
            registry=r)
        for reason in PURGE_REASONS:
            self.purged_studies.labels(reason)
            self.purged_bytes.labels(reason)
        self._lock = threading.Lock()
        self._calling_aes: set[str] = set()
        self._finding_counts: dict[str, list[int]] = {}  # label -> [scored, positive]

    # -- events -------------------------------------------------------------------------------

    def instance_answered(self, sop_class_uid: str, calling_ae: str, code: int) -> None:
        """One C-STORE answered with status `code` (an int from dicom_node.status)."""
        self._safely(lambda: self.instances_received.labels(
            sop_class_name(sop_class_uid), self._calling_ae_label(calling_ae),
            status.describe(code)).inc())

    def inference(self, seconds: float) -> None:
        """The model scored one study's eligible images in `seconds`."""
        self._safely(lambda: self.inference_seconds.observe(seconds))

    def findings(self, findings: Sequence[Any]) -> None:
        """A new study result: objects with `.label` (str) and `.present` (bool)."""
        self._safely(lambda: self._count_findings(findings))

    def delivery(self, destination: str, outcome: str) -> None:
        """One delivery attempt to `destination` ended with `outcome`."""
        self._safely(lambda: self.deliveries.labels(destination, outcome).inc())

    def purged(self, reason: str, studies: int, size_bytes: int = 0) -> None:
        """`studies` studies (`size_bytes` of files) purged; reason: retention | disk_pressure.

        Raises ValueError for another reason (the label set is fixed)."""
        if reason not in PURGE_REASONS:
            raise ValueError(f"reason: expected one of {PURGE_REASONS}, got {reason!r}")
        self.purged_studies.labels(reason).inc(studies)
        self.purged_bytes.labels(reason).inc(size_bytes)

    def watch(self, collector: WorkListCollector) -> None:
        """Read the work list (and disk) at each scrape with `collector`."""
        self.registry.register(collector)

    # -- helpers ------------------------------------------------------------------------------

    def _count_findings(self, findings: Sequence[Any]) -> None:
        with self._lock:
            for finding in findings:
                label, present = str(finding.label), bool(finding.present)
                self.findings_scored.labels(label).inc()
                self.findings_positive.labels(label).inc(int(present))  # 0: the series exists
                counts = self._finding_counts.setdefault(label, [0, 0])
                counts[0] += 1
                counts[1] += int(present)
                self.finding_positive_ratio.labels(label).set(counts[1] / counts[0])

    def _calling_ae_label(self, calling_ae: str) -> str:
        title = calling_ae.strip()
        if not title or not title.isascii() or not title.isprintable():
            return UNKNOWN
        with self._lock:
            if title in self._calling_aes:
                return title
            if len(self._calling_aes) >= MAX_CALLING_AE_LABELS:
                return OTHER
            self._calling_aes.add(title)
            return title

    @staticmethod
    def _safely(action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:  # noqa: BLE001  counting must never fail the work being counted
            log_event(LOG, "metrics_update_failed", level=logging.WARNING, exc_info=True)


def sop_class_name(sop_class_uid: str) -> str:
    """The SOP class's standard name ("Computed Radiography Image Storage"), "unknown" for a
    UID pydicom does not know (never the raw value a peer sent)."""
    if not is_valid_uid(sop_class_uid):
        return UNKNOWN
    uid = UID(sop_class_uid)
    return uid.name if uid.name != str(uid) else UNKNOWN


class WorkListCollector:
    """Gauges read at scrape time: studies by state, pending deliveries and the age of the
    oldest per destination, free disk and its floor. If the database cannot be read, its
    gauges are left out and dicom_node_worklist_reachable is 0."""

    def __init__(
        self,
        database: Database,
        spool: Spool,
        min_free_bytes: int,
        destinations: Sequence[str],
        clock: Callable[[], datetime],
    ) -> None:
        self.database = database
        self.spool = spool
        self.min_free_bytes = min_free_bytes
        self.destinations = list(destinations)
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from self._disk()
        try:
            with self.database.read_only() as session:
                states = worklist.state_counts(session)
                deliveries = outbound.destination_counts(session)
        except Exception as exc:  # noqa: BLE001  a scrape reports what it can
            log_event(LOG, "metrics_worklist_unreadable", level=logging.WARNING,
                      error=type(exc).__name__)
            yield _gauge("dicom_node_worklist_reachable", "1 when the work list could be read", 0)
            return
        yield _gauge("dicom_node_worklist_reachable", "1 when the work list could be read", 1)
        studies = GaugeMetricFamily("dicom_node_studies", "Studies in the work list by state",
                                    labels=["state"])
        for state, count in states.items():
            studies.add_metric([state.value], count)
        yield studies
        yield from self._deliveries(deliveries)

    def _deliveries(self, counts: dict[str, outbound.DestinationCounts]) -> Iterator[Metric]:
        pending = GaugeMetricFamily("dicom_node_deliveries_pending",
                                    "Objects waiting to be delivered, by destination",
                                    labels=["destination"])
        oldest = GaugeMetricFamily("dicom_node_oldest_pending_delivery_age_seconds",
                                   "Age of the oldest object waiting for this destination "
                                   "(0 when none waits)", labels=["destination"])
        now = self.clock()
        for name in dict.fromkeys([*self.destinations, *counts]):
            entry = counts.get(name, outbound.DestinationCounts())
            pending.add_metric([name], entry.pending)
            since = entry.oldest_pending_at
            age = max((now - since).total_seconds(), 0.0) if since is not None else 0.0
            oldest.add_metric([name], age)
        yield pending
        yield oldest

    def _disk(self) -> Iterator[Metric]:
        try:
            free = self.spool.free_bytes()
        except OSError as exc:
            log_event(LOG, "metrics_disk_unreadable", level=logging.WARNING, error=str(exc))
            return
        yield _gauge("dicom_node_free_disk_bytes", "Free bytes on the spool's file system", free)
        yield _gauge("dicom_node_min_free_disk_bytes",
                     "The floor (node.min_free_disk_mb): below it C-STORE is refused",
                     self.min_free_bytes)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
