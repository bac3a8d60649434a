"""HTTP inside `dicom-node serve`: /healthz, /readyz and /metrics on the real node process,
fed by dcmtk storescu and delivering to a dcmtk storescp; plus the pure label helpers."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.metrics import MAX_CALLING_AE_LABELS, NodeMetrics, sop_class_name
from ml.testing import write_random_checkpoint
from tests.dicom_factory import StudyUids, write_study
from tests.peers import NodeProcess, StoreSCP, store_responses, storescu

DX_FOR_PRESENTATION = "Digital X-Ray Image Storage - For Presentation"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt", seed=3)


def get(node: NodeProcess, path: str) -> tuple[int, str]:
    """(HTTP status, body) of GET `path` on the node's HTTP server."""
    try:
        with urllib.request.urlopen(node.http_url + path, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def readiness(node: NodeProcess) -> tuple[int, dict[str, Any]]:
    code, body = get(node, "/readyz")
    return code, json.loads(body)


def samples(node: NodeProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics: (name, labels) -> value."""
    code, body = get(node, "/metrics")
    assert code == 200
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def _model(checkpoint: Path | str) -> dict[str, Any]:
    return {"checkpoints": [str(checkpoint)], "name": "tiny-test", "cpu_threads": 1}


def test_metrics_move_as_a_study_flows_and_readyz_is_ready_with_the_model(
    node_factory, checkpoint, tmp_path
) -> None:
    storescp = StoreSCP(tmp_path / "pacs").start()
    try:
        node = node_factory("flow", model=_model(checkpoint),
                            worker={"enabled": True, "poll_interval_seconds": 1})
        with node.config_path.open("a") as f:
            f.write(f'\n[[destinations]]\nname = "pacs"\nae_title = "{storescp.ae_title}"\n'
                    f'host = "127.0.0.1"\nport = {storescp.port}\n')
        node.start()
        code, _ = get(node, "/healthz")
        assert code == 200
        ready = node.wait_for(lambda: readiness(node)[0] == 200, "/readyz to answer 200")
        assert ready
        before = samples(node)
        assert value(before, "dicom_node_studies", state="DONE") == 0

        study = StudyUids()
        files = write_study(tmp_path / "study", 2, study=study)
        sent = storescu(node.port, files, calling_ae="MODALITY1", called_ae=node.ae_title)
        assert store_responses(sent.stdout + sent.stderr) == ["Success"] * 2
        node.wait_for_state(study.study, "DONE")

        def delivered() -> dict | None:
            found = samples(node)
            sent = value(found, "dicom_node_deliveries_total", destination="pacs", outcome="sent")
            pending = value(found, "dicom_node_deliveries_pending", destination="pacs")
            # SR, summary, text report and an attention-map overlay per finding called present
            return found if sent >= 3 and pending == 0 else None

        after = node.wait_for(delivered, "the SR, summary image and text report delivered")
    finally:
        storescp.stop()
    received = value(after, "dicom_node_instances_received_total",
                     sop_class=DX_FOR_PRESENTATION, calling_ae="MODALITY1", status="Success")
    assert received == 2
    assert value(after, "dicom_node_studies", state="DONE") == 1
    assert value(after, "dicom_node_inference_seconds_count") >= 1
    assert value(after, "dicom_node_inference_seconds_sum") > 0
    scored = {dict(labels)["finding"]: v for (name, labels), v in after.items()
              if name == "dicom_node_findings_scored_total"}
    assert scored and set(scored.values()) == {1.0}
    for finding in scored:
        ratio = value(after, "dicom_node_finding_positive_ratio", finding=finding)
        positive = value(after, "dicom_node_findings_positive_total", finding=finding)
        assert ratio == positive and ratio in (0.0, 1.0)
        assert ("dicom_node_findings_positive_total", frozenset({("finding", finding)})) in after
    assert value(after, "dicom_node_deliveries_pending", destination="pacs") == 0
    assert value(after, "dicom_node_oldest_pending_delivery_age_seconds", destination="pacs") == 0
    assert value(after, "dicom_node_free_disk_bytes") > 0
    assert value(after, "dicom_node_worklist_reachable") == 1
    assert ("dicom_node_purged_studies_total", frozenset({("reason", "retention")})) in after


def test_readyz_is_unready_while_the_model_checkpoint_is_missing(node_factory, tmp_path) -> None:
    missing = tmp_path / "no-such-checkpoint.pt"
    node = node_factory("nomodel", model=_model(missing), worker={"enabled": True}).start()
    assert get(node, "/healthz")[0] == 200

    def failed() -> dict | None:
        code, body = readiness(node)
        detail = body["checks"]["model"]["detail"]
        return body if code == 503 and detail.startswith("missing") else None

    body = node.wait_for(failed, "/readyz to report the model checkpoint missing")
    assert body["status"] == "not ready" and body["not_ready"] == ["model"]
    assert str(missing) in body["checks"]["model"]["detail"]
    assert all(body["checks"][name]["ok"] for name in ("listener", "database", "disk"))


def test_readyz_is_unready_below_the_disk_floor_and_counts_the_refusal(
    node_factory, tmp_path
) -> None:
    floor_mb = 1 << 30  # 1 PiB: any disk is below it
    node = node_factory("full", node={"min_free_disk_mb": floor_mb}).start()
    code, body = readiness(node)
    assert code == 503 and body["not_ready"] == ["disk"]
    assert "min_free_disk_mb" in body["checks"]["disk"]["detail"]
    assert "worker" in body["checks"]["model"]["detail"] and body["checks"]["model"]["ok"]

    files = write_study(tmp_path / "refused", 1)
    sent = storescu(node.port, files, calling_ae="MODALITY2", called_ae=node.ae_title)
    assert store_responses(sent.stdout + sent.stderr) == ["Refused: OutOfResources"]
    found = samples(node)
    assert value(found, "dicom_node_instances_received_total", sop_class=DX_FOR_PRESENTATION,
                 calling_ae="MODALITY2", status="Refused: Out of Resources") == 1
    assert value(found, "dicom_node_min_free_disk_bytes") == floor_mb * 2**20


def test_readyz_is_ready_without_a_worker(node_factory) -> None:
    node = node_factory("noworker").start()
    code, body = readiness(node)
    assert code == 200 and body["status"] == "ready" and body["not_ready"] == []


def test_serve_fails_in_one_line_when_the_http_port_is_taken(node_factory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = node_factory("clash", http={"port": port}).start(wait=False)
        assert node.process is not None
        code = node.process.wait(timeout=60)
    lines = [line for line in node.log().splitlines() if line.startswith("dicom-node: error")]
    assert code == 2
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "http.port" in lines[0]
    assert "Traceback" not in node.log()
    assert node.events("node_stopped")  # what had started was stopped again


# -- label helpers (pure) --------------------------------------------------------------------


def test_sop_class_labels_are_standard_names_never_raw_values() -> None:
    assert sop_class_name("1.2.840.10008.5.1.4.1.1.1") == "Computed Radiography Image Storage"
    assert sop_class_name("1.2.3.4.5") == "unknown"
    assert sop_class_name("DOE^JOHN") == "unknown"


def test_calling_ae_labels_are_bounded() -> None:
    metrics = NodeMetrics()
    for i in range(MAX_CALLING_AE_LABELS + 5):
        metrics.instance_answered("1.2.840.10008.5.1.4.1.1.1", f"AE{i}", 0)
    metrics.instance_answered("1.2.840.10008.5.1.4.1.1.1", "AE0", 0)
    metrics.instance_answered("1.2.840.10008.5.1.4.1.1.1", "\x01\x02", 0)
    titles = {
        s.labels["calling_ae"]: s.value
        for family in metrics.registry.collect()
        if family.name == "dicom_node_instances_received"
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert len(titles) == MAX_CALLING_AE_LABELS + 2  # + "other" + "unknown"
    assert titles["other"] == 5 and titles["AE0"] == 2 and titles["unknown"] == 1


def test_purge_counter_takes_only_known_reasons() -> None:
    metrics = NodeMetrics()
    metrics.purged("disk_pressure", 3, 3 * 2**20)
    metrics.findings([SimpleNamespace(label="Edema", present=True)])
    found = {(s.name, tuple(s.labels.values())): s.value
             for family in metrics.registry.collect() for s in family.samples}
    assert found[("dicom_node_purged_studies_total", ("disk_pressure",))] == 3
    assert found[("dicom_node_purged_bytes_total", ("disk_pressure",))] == 3 * 2**20
    assert found[("dicom_node_finding_positive_ratio", ("Edema",))] == 1.0
    with pytest.raises(ValueError, match="reason"):
        metrics.purged("because", 1)


def test_http_server_component_serves_on_a_free_port_and_stops_cleanly() -> None:
    """In-process: port 0 binds a free port; stop() ends uvicorn's thread and frees the port."""
    from dicom_node.http.app import create_app
    from dicom_node.http.readiness import Check, Readiness
    from dicom_node.http.server import HttpServer
    from dicom_node.settings import HttpSettings

    report = Readiness((Check("database", True, "answers"), Check("disk", False, "below floor")))
    app = create_app(ae_title="UNIT", readiness=lambda: report, registry=NodeMetrics().registry)
    server = HttpServer(HttpSettings(port=0), app)
    server.start()
    try:
        port = server.port
        node = SimpleNamespace(http_url=f"http://127.0.0.1:{port}")
        assert port != 0 and json.loads(get(node, "/healthz")[1])["ae_title"] == "UNIT"
        code, body = get(node, "/readyz")
        assert code == 503 and json.loads(body)["not_ready"] == ["disk"]
    finally:
        server.stop()
    assert not any(t.name == "http" for t in threading.enumerate())
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    server.stop()  # twice is harmless
