"""The service object in-process: component order, the study-queued hook, graceful stop."""

from __future__ import annotations

import threading
from pathlib import Path

from pynetdicom import AE

from dicom_node.listener import STORAGE_SOP_CLASSES
from dicom_node.service import Service
from dicom_node.settings import load_settings
from tests.dicom_factory import make_radiograph
from tests.peers import free_port


class Recorder:
    def __init__(self, name: str, journal: list[str]) -> None:
        self.name = name
        self.journal = journal

    def start(self) -> None:
        self.journal.append(f"start {self.name}")

    def stop(self) -> None:
        self.journal.append(f"stop {self.name}")


def make_service(
    tmp_path: Path, stable_seconds: float = 0, assembly_interval_seconds: float = 0.1
) -> Service:
    settings = load_settings(
        environ={},
        overrides={
            "node": {
                "port": free_port(),
                "host": "127.0.0.1",
                "data_dir": str(tmp_path),
                "min_free_disk_mb": 1,
            },
            "worklist": {
                "stable_seconds": stable_seconds,
                "assembly_interval_seconds": assembly_interval_seconds,
            },
        },
    )
    return Service(settings)


def test_added_components_start_before_the_listener_and_stop_after_it(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    journal: list[str] = []
    service.add(Recorder("worker", journal))
    service.add(Recorder("sender", journal))
    names = [c.name for c in service.components]
    assert names == ["scheduler", "worker", "sender", "listener"]
    service.start()
    service.stop()
    assert journal == ["start worker", "start sender", "stop sender", "stop worker"]


def test_a_queued_study_sets_the_event_and_calls_back(tmp_path: Path) -> None:
    service = make_service(tmp_path)
    announced: list[str] = []
    called = threading.Event()
    service.on_study_queued(lambda uids: (announced.extend(uids), called.set()))
    service.start()
    try:
        ds = make_radiograph()
        ae = AE(ae_title="HOOKTEST")
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_requested_context(sop_class)
        association = ae.associate("127.0.0.1", service.listener.port, ae_title="AINODE")
        assert association.send_c_store(ds).Status == 0
        association.release()
        assert service.study_queued.wait(timeout=30)
        assert called.wait(timeout=30)
        assert announced == [ds.StudyInstanceUID]
    finally:
        service.stop()


def test_a_study_is_queued_when_its_quiet_period_ends_not_at_the_next_periodic_tick(
    tmp_path: Path,
) -> None:
    # The periodic sweep runs once an hour here: only the arrival-driven check can queue it.
    service = make_service(tmp_path, stable_seconds=0.5, assembly_interval_seconds=3600)
    service.start()
    try:
        ds = make_radiograph()
        ae = AE(ae_title="QUIETTEST")
        ae.add_requested_context(ds.SOPClassUID)
        association = ae.associate("127.0.0.1", service.listener.port, ae_title="AINODE")
        assert association.send_c_store(ds).Status == 0
        association.release()
        assert service.study_queued.wait(timeout=60)
    finally:
        service.stop()
