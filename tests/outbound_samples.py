"""Helpers for the outbound tests: results queued in a real outbox, a settable clock and a
pynetdicom stand-in PACS (in-process) that can refuse in the ways a real PACS does."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from dicom_node.reporting.outbox import write_report
from dicom_node.reporting.uids import ResultKey, derived_uid, report_uids
from dicom_node.settings import DestinationSettings
from storage import outbound, results
from storage.worklist import InstanceRecord, record_instance
from tests.peers import free_port
from tests.report_samples import WHEN, algorithm, dx_image, findings


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 6, 1, 8, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def queue_result(database, outbox, destination_names, kinds=("sr", "summary")):
    """A built SR and summary in the outbox, queued (the `kinds` of them) for each named
    destination. Returns the written objects that were queued."""
    study = generate_uid()
    evidence = [dx_image(study)]
    algo = algorithm()
    key = ResultKey.of(study_instance_uid=study, model_name=algo.name,
                       checkpoint_sha256s=algo.checkpoint_sha256s, profile="v1",
                       source_sop_instance_uids=[evidence[0].SOPInstanceUID])
    uids = report_uids(key, version=1, labels=[f.label for f in findings()])
    written = [o for o in write_report(
        outbox, evidence=evidence, findings=findings(), algorithm=algo, uids=uids,
        node_uid=derived_uid("n"), previous=[], when=WHEN) if o.kind in kinds]
    with database.sessions.begin() as session:
        study_id = record_instance(session, InstanceRecord(
            evidence[0].SOPInstanceUID, evidence[0].SeriesInstanceUID, study,
            evidence[0].SOPClassUID, "1.2.840.10008.1.2.1", "DX", "CHEST", "PA",
            f"{study}/x.dcm", 1, "MOD"), WHEN).study_id
        result_id = results.add_result(session, results.NewResult(
            study_id=study_id, study_instance_uid=study, result_key=key.digest(), version=1,
            supersedes_id=None, worker_id="w", model_name=algo.name,
            checkpoint_sha256s=algo.checkpoint_sha256s, catalogue_version="c",
            clinical_use=False, profile_version=1, aggregation="mean",
            sr_series_instance_uid=uids.sr.series_instance_uid,
            sr_sop_instance_uid=uids.sr.sop_instance_uid,
            summary_series_instance_uid=uids.summary.series_instance_uid,
            summary_sop_instance_uid=uids.summary.sop_instance_uid, findings=(), images=()),
            WHEN)
        outbound.enqueue(session, result_id, [
            outbound.NewDelivery(name, obj.kind, study, obj.sop_instance_uid, obj.sop_class_uid,
                                 obj.relative_path)
            for name in destination_names for obj in written
        ], WHEN)
    return written


def destination(name, port, ae="STANDIN", **timeouts) -> DestinationSettings:
    values = {"connect_timeout_seconds": 5, "network_timeout_seconds": 10,
              "dimse_timeout_seconds": 10, **timeouts}
    return DestinationSettings(name=name, ae_title=ae, host="127.0.0.1", port=port, **values)


@dataclass
class StandInPACS:
    """A pynetdicom storage SCP on loopback. `sop_classes` it accepts (Verification always);
    `answer(sop_instance_uid, n)` gives the status for the n-th (1-based) C-STORE of an
    object (default Success); `require_called_aet` rejects other called AE titles."""

    ae_title: str = "STANDIN"
    sop_classes: Sequence[str] = (ComprehensiveSRStorage, SecondaryCaptureImageStorage)
    answer: Callable[[str, int], int] = lambda _uid, _n: 0x0000
    require_called_aet: bool = False
    port: int = field(default_factory=free_port)
    received: Counter[str] = field(default_factory=Counter)  # C-STOREs per SOP Instance UID
    stored: list[str] = field(default_factory=list)  # answered Success, in order
    server: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> StandInPACS:
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = self.require_called_aet
        for sop_class in (*self.sop_classes, Verification):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def _on_store(self, event: Any) -> int:
        uid = event.request.AffectedSOPInstanceUID
        with self.lock:
            self.received[uid] += 1
            count = self.received[uid]
        status = self.answer(uid, count)
        if status == 0x0000:
            with self.lock:
                self.stored.append(uid)
        return status
