"""The DICOM listener: C-ECHO and durable C-STORE for chest radiograph SOP classes.

The C-STORE handler is thin: check, persist, record, answer. It writes the peer's encoded bytes
to the spool without decoding pixels (only the header up to the Series Instance UID is parsed),
records the instance in the work list, and only then answers Success. Collaborators are bound
through pynetdicom's 3-tuple handler binding; nothing here is global.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from pydicom import uid as uids
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import status
from dicom_node.logs import log_event
from dicom_node.settings import NodeSettings
from storage import worklist
from storage.db import Database
from storage.spool import Spool, checked_uid

LOG = logging.getLogger(__name__)

STORAGE_SOP_CLASSES: tuple[str, ...] = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
TRANSFER_SYNTAXES: tuple[str, ...] = (
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEGLSNearLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000,
    uids.RLELossless,
)
_LAST_HEADER_TAG = Tag(0x0020, 0x000E)  # Series Instance UID: everything we record comes before
_REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03
_NO_REASON_GIVEN = 0x01


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AccessPolicy:
    """Optional allow-lists; an empty list allows everyone."""

    calling_ae_titles: frozenset[str] = frozenset()
    peer_hosts: frozenset[str] = frozenset()

    @classmethod
    def from_settings(cls, node: NodeSettings) -> AccessPolicy:
        return cls(
            calling_ae_titles=frozenset(t.strip() for t in node.allowed_calling_ae_titles),
            peer_hosts=frozenset(node.allowed_peer_hosts),
        )

    def refusal(self, calling_ae_title: str, peer_host: str) -> str | None:
        """Why this caller is refused, or None when it may associate."""
        if self.calling_ae_titles and calling_ae_title.strip() not in self.calling_ae_titles:
            return "calling AE title not in allowed_calling_ae_titles"
        if self.peer_hosts and peer_host not in self.peer_hosts:
            return "peer host not in allowed_peer_hosts"
        return None


@dataclass(frozen=True)
class Header:
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None


class Intake:
    """Receives one C-STORE at a time per association thread; shared by all associations."""

    def __init__(
        self,
        database: Database,
        spool: Spool,
        min_free_disk_mb: int,
        clock: Callable[[], datetime] = utc_now,
        on_stored: Callable[[str, datetime], None] = lambda study_uid, at: None,
    ) -> None:
        self.database = database
        self.spool = spool
        self.min_free_bytes = min_free_disk_mb * 1024 * 1024
        self.clock = clock
        self.on_stored = on_stored  # (study UID, arrival time) after the row is committed
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closing = False

    def store(self, event: evt.Event) -> int:
        """The EVT_C_STORE handler body: the status to answer."""
        if not self._enter():
            log_event(LOG, "store_refused_shutting_down", level=logging.WARNING, **_who(event))
            return status.OUT_OF_RESOURCES
        started = time.perf_counter()
        try:
            return self._store(event, started)
        except Exception as exc:  # noqa: BLE001  every failure becomes a status, the peer hears it
            answer = status.status_for(exc)
            unexpected = answer == status.PROCESSING_FAILURE
            log_event(
                LOG,
                "store_failed",
                level=logging.ERROR if unexpected else logging.WARNING,
                exc_info=unexpected,
                message=str(exc),
                status=f"0x{answer:04X}",
                reason=status.describe(answer),
                **_who(event),
                sop_instance_uid=_safe_uid(event.request.AffectedSOPInstanceUID),
            )
            return answer
        finally:
            self._leave()

    def _store(self, event: evt.Event, started: float) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        sop_uid = checked_uid("SOPInstanceUID", event.request.AffectedSOPInstanceUID)
        stream: BytesIO = event.request.DataSet
        size = stream.seek(0, 2)
        self._check_free_space(size)
        header = _read_header(stream, event.context.transfer_syntax, sop_class, sop_uid)
        if self._already_stored(sop_uid, header.study_instance_uid):
            log_event(
                LOG,
                "duplicate_instance",
                sop_instance_uid=sop_uid,
                study_instance_uid=header.study_instance_uid,
                **_who(event),
            )
            return status.SUCCESS
        entry = self.spool.write(header.study_instance_uid, sop_uid, _file_chunks(event, stream))
        record = _instance_record(
            event, header, sop_class, sop_uid, entry.relative_path, entry.size_bytes
        )
        arrived = self.clock()
        with self.database.sessions.begin() as session:
            outcome = worklist.record_instance(session, record, arrived)
        self.on_stored(header.study_instance_uid, arrived)
        log_event(
            LOG,
            "instance_stored",
            sop_instance_uid=sop_uid,
            study_instance_uid=header.study_instance_uid,
            sop_class_uid=sop_class,
            transfer_syntax_uid=record.transfer_syntax_uid,
            size_bytes=entry.size_bytes,
            duplicate=outcome.duplicate,
            reopened_from=outcome.reopened_from.value if outcome.reopened_from else None,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
            **_who(event),
        )
        return status.SUCCESS

    def _check_free_space(self, incoming_bytes: int) -> None:
        free = self.spool.free_bytes()
        if free - incoming_bytes < self.min_free_bytes:
            raise status.OutOfResources(
                f"free disk {free // 2**20} MiB would fall below min_free_disk_mb "
                f"({self.min_free_bytes // 2**20} MiB)"
            )

    def _already_stored(self, sop_uid: str, study_uid: str) -> bool:
        """A duplicate is acknowledged without rewriting: the first copy received is kept."""
        with self.database.read_only() as session:
            existing = worklist.find_instance(session, sop_uid)
            if existing is None:
                return False
            path = self.spool.absolute(existing.spool_path)
        return path.is_file()

    # -- shutdown coordination ------------------------------------------------------------

    def _enter(self) -> bool:
        with self._idle:
            if self._closing:
                return False
            self._in_flight += 1
            return True

    def _leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def close(self, timeout: float) -> bool:
        """Refuse new stores and wait for those in flight; True when none is left."""
        with self._idle:
            self._closing = True
            return self._idle.wait_for(lambda: self._in_flight == 0, timeout=timeout)


def _read_header(stream: BytesIO, transfer_syntax: str, sop_class: str, sop_uid: str) -> Header:
    """Parse the data set up to the Series Instance UID (no pixel data) and check its UIDs."""
    syntax = uids.UID(transfer_syntax)
    source = stream
    if syntax == uids.DeflatedExplicitVRLittleEndian:
        source = BytesIO(zlib.decompress(stream.getvalue(), -zlib.MAX_WBITS))
    source.seek(0)
    try:
        ds = read_dataset(
            source, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=_past_header
        )
        values = {
            k: ds.get(k)
            for k in (
                "SOPClassUID",
                "SOPInstanceUID",
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "Modality",
                "BodyPartExamined",
                "ViewPosition",
            )
        }
    except Exception as exc:
        raise status.UnreadableDataset(f"data set header could not be parsed: {exc}") from exc
    if checked_uid("SOPInstanceUID (data set)", values["SOPInstanceUID"]) != sop_uid:
        raise status.DatasetMismatch("SOP Instance UID in the data set differs from the request")
    if checked_uid("SOPClassUID (data set)", values["SOPClassUID"]) != sop_class:
        raise status.DatasetMismatch("SOP Class UID in the data set differs from the request")
    return Header(
        study_instance_uid=checked_uid("StudyInstanceUID", values["StudyInstanceUID"]),
        series_instance_uid=checked_uid("SeriesInstanceUID", values["SeriesInstanceUID"]),
        modality=_short_text(values["Modality"]),
        body_part_examined=_short_text(values["BodyPartExamined"]),
        view_position=_short_text(values["ViewPosition"]),
    )


def _past_header(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return tag > _LAST_HEADER_TAG


def _short_text(value: Any) -> str | None:
    text = str(value).strip() if value not in (None, "") else ""
    return text[:64] or None


def _file_chunks(event: evt.Event, stream: BytesIO) -> Iterator[bytes | memoryview]:
    """The DICOM file: preamble, file meta, then the peer's bytes without a copy."""
    meta = event.file_meta
    meta.SourceApplicationEntityTitle = event.assoc.requestor.ae_title
    encoded = BytesIO()
    write_file_meta_info(encoded, meta, enforce_standard=True)
    yield b"\x00" * 128 + b"DICM" + encoded.getvalue()
    with stream.getbuffer() as view:
        yield view


def _instance_record(
    event: evt.Event, header: Header, sop_class: str, sop_uid: str, path: str, size: int
) -> worklist.InstanceRecord:
    return worklist.InstanceRecord(
        sop_instance_uid=sop_uid,
        series_instance_uid=header.series_instance_uid,
        study_instance_uid=header.study_instance_uid,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(event.context.transfer_syntax),
        modality=header.modality,
        body_part_examined=header.body_part_examined,
        view_position=header.view_position,
        spool_path=path,
        size_bytes=size,
        calling_ae_title=event.assoc.requestor.ae_title.strip()[:16] or None,
    )


def _who(event: evt.Event) -> dict[str, Any]:
    requestor = event.assoc.requestor
    return {
        "calling_ae": requestor.ae_title.strip(),
        "peer": f"{requestor.address}:{requestor.port}",
    }


def _safe_uid(value: Any) -> str:
    """A UID for a log line: printable and bounded even when the peer sent garbage."""
    text = str(value) if value is not None else ""
    return text.encode("ascii", "backslashreplace").decode()[:80]


# --- handlers (bound with their collaborators) ---------------------------------------------


def handle_store(event: evt.Event, intake: Intake) -> int:
    return intake.store(event)


def handle_echo(event: evt.Event) -> int:
    log_event(LOG, "echo", level=logging.DEBUG, **_who(event))
    return status.SUCCESS


def handle_requested(event: evt.Event, policy: AccessPolicy) -> None:
    """Reject an unknown caller before any negotiation, saying who was refused."""
    requestor = event.assoc.requestor
    calling_ae = requestor.primitive.calling_ae_title if requestor.primitive else ""
    reason = policy.refusal(calling_ae, str(requestor.address))
    if reason is None:
        return
    log_event(
        LOG,
        "association_rejected",
        level=logging.WARNING,
        calling_ae=calling_ae.strip(),
        peer=f"{requestor.address}:{requestor.port}",
        reason=reason,
    )
    diagnostic = _CALLING_AE_NOT_RECOGNISED if "AE title" in reason else _NO_REASON_GIVEN
    event.assoc.acse.send_reject(_REJECT_PERMANENT, _SOURCE_SERVICE_USER, diagnostic)
    event.assoc.kill()


def handle_established(event: evt.Event) -> None:
    log_event(LOG, "association_accepted", **_who(event))


# --- the listener component ----------------------------------------------------------------


class Listener:
    """A service component: the Application Entity serving on (host, port)."""

    name = "listener"

    def __init__(
        self, node: NodeSettings, intake: Intake, policy: AccessPolicy, drain_seconds: float = 30
    ) -> None:
        self.node = node
        self.intake = intake
        self.policy = policy
        self.drain_seconds = drain_seconds
        self.ae = build_ae(node)
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return self.node.port
        return int(self._server.server_address[1])

    def start(self) -> None:
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_store, [self.intake]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_REQUESTED, handle_requested, [self.policy]),
            (evt.EVT_ESTABLISHED, handle_established),
        ]
        self._server = self.ae.start_server(
            (self.node.host, self.node.port), block=False, evt_handlers=handlers
        )
        log_event(
            LOG,
            "listening",
            ae_title=self.node.ae_title,
            host=self.node.host,
            port=self.port,
            max_pdu_bytes=self.node.max_pdu_bytes,
        )

    def stop(self) -> None:
        """Stop accepting associations, let stores in flight finish, then abort the rest.

        Aborted peers got no Success for what they were sending, so nothing acknowledged is
        lost; they retry later. Stores that start after this point are refused (A700) without
        touching the database, which is why the association threads need not be joined.
        """
        if self._server is None:
            return
        self._server.shutdown()
        drained = self.intake.close(self.drain_seconds)
        remaining = len(self.ae.active_associations)
        self.ae.shutdown()
        self._server = None
        log_event(LOG, "listener_stopped", drained=drained, aborted_associations=remaining)


def build_ae(node: NodeSettings) -> AE:
    ae = AE(ae_title=node.ae_title)
    ae.maximum_pdu_size = node.max_pdu_bytes
    ae.network_timeout = node.network_timeout_seconds
    ae.acse_timeout = node.network_timeout_seconds
    ae.dimse_timeout = node.network_timeout_seconds
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    return ae
