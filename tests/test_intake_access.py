"""Who may associate, and what the node refuses to accept: allow-lists and the disk floor."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom_factory import write_study
from tests.peers import NodeProcess, echoscu, store_responses, storescu


@pytest.fixture(scope="module")
def guarded_node(tmp_path_factory: pytest.TempPathFactory):
    """Only GOODSCU from 127.0.0.1 may associate; the disk floor is far above any real disk."""
    node = NodeProcess.create(
        tmp_path_factory.mktemp("guarded"),
        node={
            "allowed_calling_ae_titles": ["GOODSCU"],
            "allowed_peer_hosts": ["127.0.0.1"],
            "min_free_disk_mb": 1_000_000_000,
        },
    )
    node.ae_title = "AINODE"
    # wait_until_answering echoes as ECHOSCU, which this node refuses: start, then probe.
    node.start(wait=False)
    try:
        node.wait_for(lambda: echoscu(node.port, calling_ae="GOODSCU").returncode == 0, "the node")
        yield node
    finally:
        node.stop()


def test_known_caller_is_served(guarded_node: NodeProcess) -> None:
    assert echoscu(guarded_node.port, calling_ae="GOODSCU").returncode == 0


def test_unknown_caller_is_rejected_and_logged(guarded_node: NodeProcess) -> None:
    result = echoscu(guarded_node.port, calling_ae="INTRUDER")
    assert result.returncode != 0
    assert "Association Rejected" in result.stderr + result.stdout
    rejected = guarded_node.events("association_rejected")
    assert any(
        e["calling_ae"] == "INTRUDER" and e["peer"].startswith("127.0.0.1:") for e in rejected
    )


def test_store_below_the_disk_floor_is_out_of_resources(
    guarded_node: NodeProcess, tmp_path: Path
) -> None:
    files = write_study(tmp_path, 1)
    result = storescu(guarded_node.port, files, calling_ae="GOODSCU")
    assert store_responses(result.stderr + result.stdout) == ["Refused: OutOfResources"]
    refused = guarded_node.events("store_failed")
    assert refused and refused[-1]["status"] == "0xA700"
    assert not any(guarded_node.data_dir.joinpath("spool").rglob("*.dcm"))
    assert guarded_node.cli_json("status")["spool"]["below_floor"] is True


def test_unknown_peer_host_is_rejected(node_factory) -> None:
    node = node_factory("hosts", node={"allowed_peer_hosts": ["192.0.2.7"]})
    node.start(wait=False)
    node.wait_for(lambda: node.events("listening"), "the node to listen")
    result = echoscu(node.port)
    assert result.returncode != 0
    rejected = node.events("association_rejected")
    assert rejected and rejected[0]["reason"] == "peer host not in allowed_peer_hosts"
