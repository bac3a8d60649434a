"""Several associations storing at once: every instance acknowledged is accounted for."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pydicom.dataset import Dataset
from pynetdicom import AE

from dicom_node.listener import STORAGE_SOP_CLASSES
from tests.dicom_factory import StudyUids, make_radiograph
from tests.peers import NodeProcess

ASSOCIATIONS = 4
STUDIES_PER_ASSOCIATION = 3
INSTANCES_PER_STUDY = 10  # 4 x 3 x 10 = 120 instances


def send(port: int, datasets: list[Dataset], calling_ae: str) -> list[int]:
    ae = AE(ae_title=calling_ae)
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_requested_context(sop_class)
    association = ae.associate("127.0.0.1", port, ae_title="AINODE")
    if not association.is_established:
        raise RuntimeError("association was not established")
    try:
        return [int(association.send_c_store(ds).Status) for ds in datasets]
    finally:
        association.release()


def batch(index: int) -> list[Dataset]:
    datasets = []
    for _ in range(STUDIES_PER_ASSOCIATION):
        study = StudyUids()
        datasets += [
            make_radiograph(
                kind="CR" if index % 2 else "DX",
                study=study,
                instance_number=i + 1,
                rows=32,
                columns=32,
                seed=i,
            )
            for i in range(INSTANCES_PER_STUDY)
        ]
    return datasets


def test_concurrent_associations_lose_nothing(shared_node: NodeProcess) -> None:
    batches = [batch(i) for i in range(ASSOCIATIONS)]
    with ThreadPoolExecutor(ASSOCIATIONS) as pool:
        statuses = list(
            pool.map(
                lambda i: send(shared_node.port, batches[i], f"SENDER{i}"), range(ASSOCIATIONS)
            )
        )
    assert all(status == 0 for per_association in statuses for status in per_association)
    sent = {ds.SOPInstanceUID for datasets in batches for ds in datasets}
    assert len(sent) == ASSOCIATIONS * STUDIES_PER_ASSOCIATION * INSTANCES_PER_STUDY

    listed = {s["study_instance_uid"]: s for s in shared_node.cli_json("studies", "list")}
    for uid in {ds.StudyInstanceUID for datasets in batches for ds in datasets}:
        assert listed[uid]["instance_count"] == INSTANCES_PER_STUDY
    spooled = {p.stem for p in (shared_node.data_dir / "spool").rglob("*.dcm")}
    assert spooled == sent
