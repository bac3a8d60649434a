"""Intake accepts what conformant peers accept (issue 10, section 1): leading-zero UIDs,
NUL-padded AE titles, whole studies forwarded by a PACS, bounded Deflate, disk full.

Real peers: the node as a `dicom-node serve` subprocess, dcmtk storescu, Orthanc, and for what
no ordinary client sends (NUL padding, a blank AE title, a dropped connection, a Deflate bomb)
pynetdicom as the peer or a raw socket speaking the upper-layer protocol (PS3.8).
"""

from __future__ import annotations

import errno
import socket
import sqlite3
import struct
import time
import zlib
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom import uid as uids
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pynetdicom import AE, _config, build_context
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    P_DATA,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from sqlalchemy import event

from dicom_node import status
from dicom_node.listener import STORAGE_SOP_CLASSES
from dicom_node.service import Service
from dicom_node.settings import load_settings
from tests.dicom_factory import (
    OTHER_SOP_CLASSES,
    TEST_UID_ROOT,
    StudyUids,
    make_other_object,
    make_radiograph,
    write,
)
from tests.peers import NodeProcess, OrthancPeer, free_port, store_responses, storescu

LEADING_ZEROS = "1.2.826.0.1.3680043.8.498.2026.011.029.7"  # date-stamped, as devices make them
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x02, 0x03


def _node_events_for_peer(node: NodeProcess, port: int) -> list[dict]:
    return [e for e in node.events() if str(e.get("peer", "")).endswith(f":{port}")]


# --- 1. UIDs with leading-zero components -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom's own PS3.5 check
def test_leading_zero_uids_are_stored_analysed_and_reported_unchanged(tmp_path: Path) -> None:
    study = StudyUids(study=f"{LEADING_ZEROS}.01", series=f"{LEADING_ZEROS}.02.001")
    pa = make_radiograph(
        view="PA", study=study, sop_instance_uid=f"{LEADING_ZEROS}.03.0001", rows=256, columns=256
    )
    pa.PatientName = "SMITHSINGLE"  # one component: a warning of another kind, still logged
    orthanc = OrthancPeer(tmp_path / "orthanc").start()
    node = NodeProcess.create(
        tmp_path / "node",
        worker={"enabled": True, "poll_interval_seconds": 1},
        outbound={"poll_interval_seconds": 1},
    )
    with node.config_path.open("a") as f:
        f.write(
            f'\n[[destinations]]\nname = "pacs"\nae_title = "{orthanc.ae_title}"\n'
            f'host = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
        )
    try:
        node.start()
        result = storescu(node.port, [write(pa, tmp_path / "pa.dcm")])
        assert store_responses(result.stderr) == ["Success"]
        spooled = node.data_dir / "spool" / study.study / f"{pa.SOPInstanceUID}.dcm"
        assert pydicom.dcmread(spooled).SOPInstanceUID == pa.SOPInstanceUID
        node.wait_for_state(study.study, "DONE", timeout=120)

        def sr_in_orthanc():
            return [i for i in orthanc.study_instances(study.study) if i["SOPClassUID"] == SR_CLASS]

        (sr,) = node.wait_for(sr_in_orthanc, "the SR in Orthanc", timeout=120)
        path = tmp_path / "sr.dcm"
        path.write_bytes(orthanc.get_bytes(f"/instances/{sr['ID']}/file"))
        report = hd.sr.srread(path)
        assert report.StudyInstanceUID == study.study
        groups = report.content.get_image_measurement_groups()
        referenced = {image.referenced_sop_instance_uid for image in groups[0].source_images}
        assert referenced == {pa.SOPInstanceUID}
    finally:
        node.stop()
        orthanc.stop()
    # accepted on purpose, so pydicom's complaint about these UIDs is not logged ...
    assert "Invalid value for VR UI" not in node.log()
    # ... while its other warnings still are, redacted
    others = [e for e in node.events("python_warning") if "<redacted>" in e["text"]]
    assert others and "SMITHSINGLE" not in node.log()


# --- 2. AE titles: NUL padding, unusable titles, dropped connections ----------------------------


def _encoded_associate_rq(called: bytes, calling: bytes, sop_class: str) -> bytes:
    """An A-ASSOCIATE-RQ PDU proposing `sop_class` (context 1), with the raw 16-byte AE fields."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "PLACEHOLDER"
    primitive.called_ae_title = "PLACEHOLDER"
    context = build_context(sop_class, [uids.ExplicitVRLittleEndian])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    maximum, implementation = MaximumLengthNotification(), ImplementationClassUIDNotification()
    maximum.maximum_length_received = 16384
    implementation.implementation_class_uid = TEST_UID_ROOT + "1"
    primitive.user_information = [maximum, implementation]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    encoded = bytearray(pdu.encode())
    encoded[10:26], encoded[26:42] = called.ljust(16, b" "), calling.ljust(16, b" ")
    return bytes(encoded)


def _read_pdu(sock: socket.socket) -> bytes:
    head = _read_exactly(sock, 6)
    (length,) = struct.unpack(">L", head[2:])
    return head + _read_exactly(sock, length)


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory):
    """A node with the shipped defaults for intake (other_sop_classes = "ignore")."""
    running = NodeProcess.create(tmp_path_factory.mktemp("real-world")).start()
    yield running
    running.stop()


def test_nul_padded_ae_titles_are_accepted_with_the_padding_stripped(
    node: NodeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = A_ASSOCIATE_RQ.encode

    def nul_padded(self: A_ASSOCIATE_RQ) -> bytes:  # the peer pads with NUL, as some devices do
        encoded = bytearray(original(self))
        encoded[10:26] = b"AINODE".ljust(16, b"\x00")
        encoded[26:42] = b"PADDEDSCU".ljust(16, b"\x00")
        return bytes(encoded)

    monkeypatch.setattr(A_ASSOCIATE_RQ, "encode", nul_padded)
    ds = make_radiograph(rows=64, columns=64)
    peer = AE(ae_title="PADDEDSCU")
    peer.add_requested_context(ds.SOPClassUID)
    association = peer.associate("127.0.0.1", node.port, ae_title="AINODE")
    assert association.is_established
    assert association.send_c_store(ds).Status == status.SUCCESS
    association.release()
    (instance,) = node.cli_json("studies", "show", ds.StudyInstanceUID)["instances"]
    assert instance["calling_ae_title"] == "PADDEDSCU"
    spooled = pydicom.dcmread(node.data_dir / "spool" / instance["spool_path"])
    assert spooled.file_meta.SourceApplicationEntityTitle == "PADDEDSCU"


@pytest.mark.parametrize(
    ("called", "calling", "reason"),
    [
        (b"AINODE", b" " * 16, "calling AE title is blank or not a valid AE title"),
        (b"AINODE", b"\x00" * 16, "calling AE title is blank or not a valid AE title"),
        (b" " * 16, b"STORESCU", "called AE title is blank or not a valid AE title"),
    ],
    ids=["blank-calling", "all-nul-calling", "blank-called"],
)
def test_an_unusable_ae_title_gets_a_reject_and_one_log_line(
    node: NodeProcess, called: bytes, calling: bytes, reason: str
) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(_encoded_associate_rq(called, calling, uids.ComputedRadiographyImageStorage))
        answer = _read_pdu(sock)
        port = sock.getsockname()[1]
    assert answer[0] == A_ASSOCIATE_RJ
    assert answer[7:10] == bytes([1, 1, 7 if reason.startswith("called") else 3])  # permanent
    lines = node.wait_for(lambda: _node_events_for_peer(node, port), "the rejection log line")
    time.sleep(0.5)  # anything pynetdicom would add comes at once
    lines = _node_events_for_peer(node, port)
    assert [(e["event"], e["reason"]) for e in lines] == [("association_rejected", reason)]
    assert "Traceback" not in node.log()
    assert not [e for e in node.events() if e["logger"].startswith("pynetdicom")]


def test_a_peer_dropping_the_connection_mid_store_leaves_one_line(node: NodeProcess) -> None:
    ds = make_radiograph(rows=256, columns=256)
    primitive = C_STORE()
    primitive.MessageID, primitive.Priority = 1, 2
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    body = BytesIO()
    write_dataset_only(ds, body)
    primitive.DataSet = body
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    pdus = [_p_data_tf(p_data) for p_data in message.encode_msg(1, 16384)]
    assert len(pdus) > 4
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(_encoded_associate_rq(b"AINODE", b"DROPPER", ds.SOPClassUID))
        assert _read_pdu(sock)[0] == A_ASSOCIATE_AC
        sent = pdus[: len(pdus) // 2]
        for pdu in sent:
            sock.sendall(pdu)
        port = sock.getsockname()[1]
        time.sleep(0.3)  # let the node read what was sent before the peer vanishes
    interrupted = node.wait_for(
        lambda: [e for e in _node_events_for_peer(node, port) if e["event"] == "store_interrupted"],
        "the store_interrupted line",
    )
    time.sleep(0.5)
    lines = [e["event"] for e in _node_events_for_peer(node, port)]
    assert lines == ["association_accepted", "store_interrupted"]
    assert interrupted[0]["calling_ae"] == "DROPPER"
    assert interrupted[0]["bytes_received"] == sum(len(p) for p in sent)
    assert "Traceback" not in node.log()
    assert not (node.data_dir / "spool" / ds.StudyInstanceUID).exists()


def _p_data_tf(primitive: P_DATA) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return pdu.encode()


def write_dataset_only(ds: pydicom.Dataset, target: BytesIO) -> None:
    """The data set as a C-STORE carries it: Explicit VR Little Endian, no preamble or meta."""
    encoded = DicomBytesIO()
    encoded.is_little_endian, encoded.is_implicit_VR = True, False
    write_dataset(encoded, ds)
    target.write(encoded.getvalue())
    target.seek(0)


# --- 3. Other storage SOP classes ------------------------------------------------------------


def test_a_pacs_forwarding_a_whole_study_gets_success_and_only_the_cr_is_kept(
    node: NodeProcess, tmp_path: Path
) -> None:
    study = StudyUids()
    cr = make_radiograph(kind="CR", study=study, rows=64, columns=64)
    others = [make_other_object(kind, study, seed=i) for i, kind in enumerate(OTHER_SOP_CLASSES)]
    files = [write(ds, tmp_path / f"{i}.dcm") for i, ds in enumerate([cr, *others])]
    result = storescu(node.port, files, calling_ae="PACSFWD")
    assert store_responses(result.stderr) == ["Success"] * 6
    shown = node.cli_json("studies", "show", study.study)
    assert [i["sop_instance_uid"] for i in shown["instances"]] == [cr.SOPInstanceUID]
    assert shown["ignored_instances"] == {ds.SOPClassUID: 1 for ds in others}
    assert [p.name for p in (node.data_dir / "spool" / study.study).iterdir()] == [
        f"{cr.SOPInstanceUID}.dcm"
    ]
    node.wait_for_state(study.study, "QUEUED")  # the CR is queued for analysis as usual
    (summary,) = node.wait_for(
        lambda: [e for e in node.events("ignored_instances") if e["calling_ae"] == "PACSFWD"],
        "the per-association summary",
    )
    assert summary["count"] == 5
    assert {uid: v["count"] for uid, v in summary["sop_classes"].items()} == {
        ds.SOPClassUID: 1 for ds in others
    }
    assert summary["sop_classes"][uids.CTImageStorage]["name"] == "CT Image Storage"


def test_a_study_of_only_other_objects_creates_no_work(node: NodeProcess, tmp_path: Path) -> None:
    study = StudyUids()
    ct = [make_other_object("CT", study, seed=i) for i in range(3)]
    result = storescu(node.port, [write(ds, tmp_path / f"ct{i}.dcm") for i, ds in enumerate(ct)])
    assert store_responses(result.stderr) == ["Success"] * 3
    assert not (node.data_dir / "spool" / study.study).exists()
    time.sleep(1.5)  # longer than stable_seconds: a study would be QUEUED by now
    assert node.study(study.study) is None
    assert node.cli_json("status")["ignored_instances"] >= 3


def test_refuse_mode_refuses_other_sop_classes_at_negotiation(node_factory, tmp_path) -> None:
    refusing = node_factory("refuse", node={"other_sop_classes": "refuse"}).start()
    ct = write(make_other_object("CT", StudyUids()), tmp_path / "ct.dcm")
    cr = write(make_radiograph(kind="CR", rows=64, columns=64), tmp_path / "cr.dcm")
    result = storescu(refusing.port, [ct])
    assert "No presentation context" in result.stderr + result.stdout
    assert store_responses(result.stderr) == []
    assert store_responses(storescu(refusing.port, [cr]).stderr) == ["Success"]


# --- 4. Deflate: bounded header read, capped inflated size -------------------------------------


def _deflate_bomb(directory: Path, inflated_bytes: int) -> tuple[Path, pydicom.Dataset]:
    """A Deflated DX file whose Pixel Data is `inflated_bytes` of zeros, built with zlib (the
    same 16 MiB block compressed after a full flush repeats byte for byte, so nothing large is
    ever held). About 1 MB on disk per GB inflated."""
    ds = make_radiograph(rows=64, columns=64)
    del ds.PixelData
    header = BytesIO()
    write_dataset_only(ds, header)
    block = 16 << 20
    blocks = inflated_bytes // block
    pixel_tag = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OW", 0, blocks * block)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    head = deflater.compress(header.getvalue() + pixel_tag) + deflater.flush(zlib.Z_FULL_FLUSH)
    zeros = deflater.compress(bytes(block)) + deflater.flush(zlib.Z_FULL_FLUSH)
    tail = deflater.flush()
    ds.file_meta.TransferSyntaxUID = uids.DeflatedExplicitVRLittleEndian
    path = directory / "bomb.dcm"
    with path.open("wb") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, ds.file_meta, enforce_standard=True)
        f.write(head)
        for _ in range(blocks):
            f.write(zeros)
        f.write(tail)
    return path, ds


def _peak_memory_bytes(node: NodeProcess) -> int:
    for line in Path(f"/proc/{node.process.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def test_a_deflate_bomb_is_refused_quickly_without_inflating_it(
    node_factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The peer sends the file's bytes as they are (by default pynetdicom would inflate it first).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    bombed = node_factory("deflate").start()  # its own process: VmHWM is this test's alone
    path, ds = _deflate_bomb(tmp_path, 1536 << 20)
    assert path.stat().st_size < 2_000_000
    before = _peak_memory_bytes(bombed)
    peer = AE(ae_title="BOMBER")
    peer.add_requested_context(ds.SOPClassUID, [uids.DeflatedExplicitVRLittleEndian])
    association = peer.associate("127.0.0.1", bombed.port, ae_title="AINODE")
    started = time.monotonic()
    answer = association.send_c_store(path)
    elapsed = time.monotonic() - started
    association.release()
    assert answer.Status == status.OUT_OF_RESOURCES
    assert "max_inflated_mb" in answer.ErrorComment
    assert elapsed < 10
    grown = _peak_memory_bytes(bombed) - before
    assert grown < 100 << 20, f"peak memory grew by {grown >> 20} MiB"
    (failure,) = bombed.events("store_failed")
    assert failure["status"] == "0xA700" and failure["sop_instance_uid"] == ds.SOPInstanceUID
    assert not any((bombed.data_dir / "spool").rglob("*.dcm"))


def test_a_normal_deflated_image_is_stored_with_its_header_read(
    node: NodeProcess, tmp_path: Path
) -> None:
    ds = make_radiograph(
        view="AP", rows=512, columns=512, transfer_syntax=uids.DeflatedExplicitVRLittleEndian
    )
    result = storescu(node.port, [write(ds, tmp_path / "deflated.dcm")], options=["-xd"])
    assert store_responses(result.stderr) == ["Success"]
    (instance,) = node.cli_json("studies", "show", ds.StudyInstanceUID)["instances"]
    assert (instance["view_position"], instance["modality"]) == ("AP", "DX")
    assert instance["series_instance_uid"] == ds.SeriesInstanceUID
    assert instance["transfer_syntax_uid"] == uids.DeflatedExplicitVRLittleEndian
    spooled = pydicom.dcmread(node.data_dir / "spool" / instance["spool_path"])
    assert (spooled.pixel_array == ds.pixel_array).all()


# --- 5. Disk full ------------------------------------------------------------------------------


def test_a_full_database_answers_out_of_resources_and_leaves_no_spool_file(tmp_path) -> None:
    """SQLite really full: every connection of the node gets PRAGMA max_page_count = the pages
    the database has now, so the work list can grow only within them."""
    settings = load_settings(
        environ={},
        overrides={
            "node": {"port": free_port(), "host": "127.0.0.1", "data_dir": str(tmp_path),
                     "min_free_disk_mb": 1},
            "worklist": {"stable_seconds": 3600},
        },
    )
    service = Service(settings)
    engine = service.database.engine
    with engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA page_count").scalar()

    @event.listens_for(engine, "connect")
    def _cap(dbapi_connection, _record) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    engine.dispose()  # pooled connections reconnect with the cap
    service.start()
    try:
        peer = AE(ae_title="FILLER")
        for sop_class in STORAGE_SOP_CLASSES:
            peer.add_requested_context(sop_class)
        association = peer.associate("127.0.0.1", service.listener.port, ae_title="AINODE")
        stored, answer, refused = [], None, None
        for i in range(200):
            ds = make_radiograph(rows=16, columns=16, seed=i)
            answer = association.send_c_store(ds)
            if answer.Status != status.SUCCESS:
                refused = ds
                break
            stored.append(ds)
        association.release()
    finally:
        service.stop()
    assert refused is not None, "the capped database never filled up"
    assert answer.Status == status.OUT_OF_RESOURCES
    assert answer.ErrorComment == "disk or database full"
    spool = tmp_path / "spool"
    assert not (spool / refused.StudyInstanceUID).exists() or not any(
        (spool / refused.StudyInstanceUID).iterdir()
    )
    assert sorted(p.stem for p in spool.rglob("*.dcm")) == sorted(
        ds.SOPInstanceUID for ds in stored
    )


def test_enospc_and_sqlite_full_map_to_out_of_resources(tmp_path: Path) -> None:
    with pytest.raises(OSError) as written, open("/dev/full", "wb", buffering=0) as full:
        full.write(b"spool bytes")
    assert written.value.errno == errno.ENOSPC
    assert status.status_for(written.value) == status.OUT_OF_RESOURCES
    connection = sqlite3.connect(tmp_path / "tiny.sqlite")
    connection.execute("CREATE TABLE t (x BLOB)")
    (pages,) = connection.execute("PRAGMA page_count").fetchone()
    connection.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError) as full_db:
        connection.execute("INSERT INTO t VALUES (zeroblob(100000))")
    connection.close()
    assert status.status_for(full_db.value) == status.OUT_OF_RESOURCES
    assert status.status_for(RuntimeError("anything else")) == status.PROCESSING_FAILURE
