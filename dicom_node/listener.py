"""The DICOM listener: C-ECHO and durable C-STORE for chest radiograph SOP classes.

The C-STORE handler is thin: check, persist, record, answer. It writes the peer's encoded bytes
to the spool without decoding pixels (only the header up to the Series Instance UID is parsed),
records the instance in the work list, and only then answers Success. Collaborators are bound
through pynetdicom's 3-tuple handler binding.

Other storage SOP classes (a PACS forwarding a whole study) are, with `other_sop_classes =
"ignore"`, acknowledged without keeping their bulk data: one `ignored_instance` row each and
one summary log line per association. A Deflated data set is inflated only as far as its header
and counted (not kept) up to `max_inflated_mb`, so a small upload cannot exhaust memory.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from pydicom import uid as uids
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag, Tag
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom._validators import validate_ae
from pynetdicom.dul import _PDU_TYPES
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import status
from dicom_node.logs import log_event
from dicom_node.settings import NodeSettings, peer_networks
from storage import worklist
from storage.db import Database
from storage.ignored import IgnoredRecord, record_ignored
from storage.retention import is_purged_instance
from storage.spool import Spool, SpoolEntry, checked_uid
from storage.study_search import accession_sha256

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
# Objects the node does not analyse are only filed (header read, bulk data dropped), so any
# transfer syntax pydicom knows is fine for them.
OTHER_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(
    dict.fromkeys([*TRANSFER_SYNTAXES, *uids.AllTransferSyntaxes])
)
_LAST_HEADER_TAG = Tag(0x0020, 0x000E)  # Series Instance UID: everything we record comes before
_REJECT_PERMANENT, _SOURCE_SERVICE_USER, _CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03
_CALLED_AE_NOT_RECOGNISED, _NO_REASON_GIVEN = 0x07, 0x01
_P_DATA_TF = b"\x04"
_INFLATE_CHUNK = 1 << 20
_HEADER_FIRST_READ = 64 << 10
_HEADER_MAX_BYTES = 64 << 20  # a header (everything before Pixel Data's groups) is far smaller
# What an A-ASSOCIATE-RQ AE title field becomes when nothing usable is left after stripping the
# space/NUL padding. Stripped titles never start with a space, so no real title can equal it.
UNUSABLE_AE_TITLE = " <unusable>"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _address_in(host: str, networks: Sequence[IPv4Network | IPv6Network]) -> bool:
    try:
        address = ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


@dataclass(frozen=True)
class AccessPolicy:
    """Optional allow-lists; an empty list allows everyone."""

    calling_ae_titles: frozenset[str] = frozenset()
    peer_networks: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def from_settings(cls, node: NodeSettings) -> AccessPolicy:
        """Raises ConfigError naming node.allowed_peer_hosts for an entry that is neither an
        address, a CIDR network nor a host name that resolves now."""
        return cls(
            calling_ae_titles=frozenset(t.strip() for t in node.allowed_calling_ae_titles),
            peer_networks=peer_networks(node.allowed_peer_hosts),
        )

    def refusal(
        self, calling_ae_title: str, peer_host: str, called_ae_title: str = ""
    ) -> str | None:
        """Why this caller is refused, or None when it may associate."""
        if calling_ae_title == UNUSABLE_AE_TITLE:
            return "calling AE title is blank or not a valid AE title"
        if called_ae_title == UNUSABLE_AE_TITLE:
            return "called AE title is blank or not a valid AE title"
        if self.calling_ae_titles and calling_ae_title.strip() not in self.calling_ae_titles:
            return "calling AE title not in allowed_calling_ae_titles"
        if self.peer_networks and not _address_in(peer_host, self.peer_networks):
            return "peer host not in allowed_peer_hosts"
        return None


@dataclass(frozen=True)
class Header:
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    body_part_examined: str | None
    view_position: str | None
    accession_sha256: str | None = None  # the console searches by it; the number is not kept


class Intake:
    """Receives one C-STORE at a time per association thread; shared by all associations."""

    def __init__(
        self,
        database: Database,
        spool: Spool,
        min_free_disk_mb: int,
        clock: Callable[[], datetime] = utc_now,
        on_stored: Callable[[str, datetime], None] = lambda study_uid, at: None,
        max_inflated_mb: int = 256,
        pressure_margin_mb: int = 0,
        relieve_pressure: Callable[[int], int] | None = None,
        on_answered: Callable[[str, str, int], None] = lambda sop_class, calling_ae, code: None,
    ) -> None:
        self.database = database
        self.spool = spool
        self.min_free_bytes = min_free_disk_mb * 1024 * 1024
        # below floor + margin, `relieve_pressure(wanted_free_bytes) -> free bytes` purges
        # delivered studies (dicom_node.retention) before a store would be refused
        self.pressure_bytes = self.min_free_bytes + pressure_margin_mb * 1024 * 1024
        self.relieve_pressure = relieve_pressure
        self.max_inflated_bytes = max_inflated_mb * 1024 * 1024
        self.clock = clock
        self.on_stored = on_stored  # (study UID, arrival time) after the row is committed
        self.on_answered = on_answered  # (SOP Class UID, calling AE, status) for every C-STORE
        self.journal = AssociationJournal()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._closing = False

    def store(self, event: evt.Event) -> int | Dataset:
        """The EVT_C_STORE handler body: the status to answer (a Dataset with Status and an
        Error Comment saying why, for a failure)."""
        answer = self._answer(event)
        code = answer if isinstance(answer, int) else int(answer.Status)
        self.on_answered(str(event.request.AffectedSOPClassUID), _calling_ae(event), code)
        return answer

    def _answer(self, event: evt.Event) -> int | Dataset:
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
            response = Dataset()
            response.Status = answer
            response.ErrorComment = status.error_comment(exc, answer)
            return response
        finally:
            self._leave()

    def _store(self, event: evt.Event, started: float) -> int:
        sop_class = str(event.request.AffectedSOPClassUID)
        sop_uid = checked_uid("SOPInstanceUID", event.request.AffectedSOPInstanceUID)
        stream: BytesIO = event.request.DataSet
        size = stream.seek(0, 2)
        analysed = sop_class in STORAGE_SOP_CLASSES
        if analysed:
            self._check_free_space(size)
        header = _read_header(
            stream, event.context.transfer_syntax, sop_class, sop_uid, self.max_inflated_bytes
        )
        if not analysed:
            return self._ignore(event, header, sop_class, sop_uid)
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
        outcome = self._record(entry, record, arrived)
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

    def _record(
        self, entry: SpoolEntry, record: worklist.InstanceRecord, arrived: datetime
    ) -> worklist.RecordOutcome:
        """Commit the instance row; when that fails, the spool file just written goes too."""
        try:
            with self.database.sessions.begin() as session:
                return worklist.record_instance(session, record, arrived)
        except Exception:
            self._discard_unrecorded(entry, record.sop_instance_uid)
            raise

    def _discard_unrecorded(self, entry: SpoolEntry, sop_uid: str) -> None:
        """Remove `entry` unless a concurrent store of the same instance recorded it (then the
        file is that row's). If even that check fails the file is kept: an orphan file costs
        disk, a missing one would lose an acknowledged instance."""
        try:
            with self.database.read_only() as session:
                if worklist.find_instance(session, sop_uid) is not None:
                    return
        except Exception:  # noqa: BLE001  the store is failing anyway; its error is reported
            return
        entry.path.unlink(missing_ok=True)
        log_event(LOG, "spool_file_discarded", level=logging.WARNING, sop_instance_uid=sop_uid)

    def _ignore(self, event: evt.Event, header: Header, sop_class: str, sop_uid: str) -> int:
        """File a storage object the node does not analyse: a row, no file, no study."""
        record = IgnoredRecord(
            sop_instance_uid=sop_uid,
            study_instance_uid=header.study_instance_uid,
            sop_class_uid=sop_class,
            calling_ae_title=_calling_ae(event)[:16] or None,
        )
        with self.database.sessions.begin() as session:
            record_ignored(session, record, self.clock())
        self.journal.ignored(event.assoc, sop_class)
        return status.SUCCESS

    def _check_free_space(self, incoming_bytes: int) -> None:
        free = self.spool.free_bytes()
        if free - incoming_bytes >= self.pressure_bytes:
            return
        if self.relieve_pressure is not None:
            free = self.relieve_pressure(self.pressure_bytes + incoming_bytes)
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
            # retention deleted it after delivery: a re-sent copy is not kept again
            purged = not path.is_file() and is_purged_instance(session, sop_uid)
        return purged or path.is_file()

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


def _read_header(
    stream: BytesIO, transfer_syntax: str, sop_class: str, sop_uid: str, max_inflated: int
) -> Header:
    """Parse the data set up to the Series Instance UID (no pixel data) and check its UIDs.

    A Deflated data set is inflated only as far as the header, then counted to its end without
    being kept; beyond `max_inflated` bytes OutOfResources is raised. Unparseable input raises
    UnreadableDataset, UIDs that differ from the request DatasetMismatch, bad UIDs InvalidUID.
    """
    syntax = uids.UID(transfer_syntax)
    if syntax == uids.DeflatedExplicitVRLittleEndian:
        values = _read_deflated_header(stream.getvalue(), max_inflated)
    else:
        stream.seek(0)
        values = _parse_header(stream, syntax, complete=True)
    if values is None:  # cannot happen with complete=True; keeps the type checker honest
        raise status.UnreadableDataset("data set header could not be parsed")
    return _checked_header(values, sop_class, sop_uid)


_HEADER_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "AccessionNumber",
)


def _parse_header(source: BytesIO, syntax: uids.UID, complete: bool) -> dict[str, Any] | None:
    """The header values of the data set in `source`. When `source` may be only a prefix of the
    data set (`complete` False), None means "read more": the header did not end inside it."""
    passed = []

    def past_header(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        if tag > _LAST_HEADER_TAG:
            passed.append(tag)
            return True
        return False

    try:
        ds = read_dataset(
            source, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=past_header
        )
        values = {k: ds.get(k) for k in _HEADER_KEYWORDS}
    except Exception as exc:
        if not complete:
            return None
        raise status.UnreadableDataset(f"data set header could not be parsed: {exc}") from exc
    if not complete and not passed:
        return None
    return values


def _read_deflated_header(compressed: bytes, max_inflated: int) -> dict[str, Any]:
    """Header values of a Deflated Explicit VR Little Endian data set, inflating a growing
    prefix (64 KiB, x4 each time) until the header ends inside it, then the rest uncounted."""
    inflater = _BoundedInflater(compressed, max_inflated)
    wanted = _HEADER_FIRST_READ
    while True:
        inflater.extend_prefix(wanted)
        values = _parse_header(
            BytesIO(inflater.prefix), uids.DeflatedExplicitVRLittleEndian, inflater.finished
        )
        if values is not None:
            break
        if wanted >= _HEADER_MAX_BYTES:
            raise status.UnreadableDataset(
                f"data set header does not end within {_HEADER_MAX_BYTES // 2**20} MiB"
            )
        wanted *= 4
    inflater.drain()
    return values


class _BoundedInflater:
    """Raw DEFLATE (PS3.5 A.5) inflated on demand: a kept prefix, then a counted remainder.

    Memory is the prefix plus one 1 MiB chunk, whatever the stream claims to inflate to.
    """

    def __init__(self, compressed: bytes, limit: int) -> None:
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._input: bytes | None = compressed
        self.limit = limit
        self.prefix = bytearray()
        self.total = 0
        self.finished = False

    def _next(self) -> bytes:
        data = self._input if self._input is not None else self._inflater.unconsumed_tail
        self._input = None
        try:
            chunk = self._inflater.decompress(data, _INFLATE_CHUNK)
        except zlib.error as exc:
            raise status.UnreadableDataset(
                f"Deflated data set could not be inflated: {exc}"
            ) from exc
        self.total += len(chunk)
        if self.total > self.limit:
            raise status.DataSetTooLarge(
                f"Deflated data set inflates beyond max_inflated_mb "
                f"({self.limit // 2**20} MiB); not stored"
            )
        self.finished = not chunk
        return chunk

    def extend_prefix(self, size: int) -> None:
        while len(self.prefix) < size and not self.finished:
            self.prefix += self._next()

    def drain(self) -> None:
        """Inflate the rest without keeping it, only to enforce the limit."""
        while not self.finished:
            self._next()


def _checked_header(values: dict[str, Any], sop_class: str, sop_uid: str) -> Header:
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
        accession_sha256=accession_sha256(values["AccessionNumber"]),
    )


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
        accession_sha256=header.accession_sha256,
    )


def _calling_ae(event: evt.Event) -> str:
    return str(event.assoc.requestor.ae_title or "").strip()


def _who(event: evt.Event) -> dict[str, Any]:
    requestor = event.assoc.requestor
    return {"calling_ae": _calling_ae(event), "peer": f"{requestor.address}:{requestor.port}"}


# --- per-association journal ----------------------------------------------------------------


@dataclass
class _AssociationState:
    pending_bytes: int = 0  # P-DATA bytes of a DIMSE message not yet complete
    ignored: Counter[str] = field(default_factory=Counter)  # SOP Class UID -> objects


class AssociationJournal:
    """What happened on each association, logged once when its connection closes: one
    `ignored_instances` line with counts per SOP class, and one `store_interrupted` line when
    the peer went away in the middle of a message. Thread-safe (handlers run per association)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[Any, _AssociationState] = {}

    def _state(self, assoc: Any) -> _AssociationState:
        with self._lock:
            return self._states.setdefault(assoc, _AssociationState())

    def data_received(self, event: evt.Event) -> None:
        """EVT_DATA_RECV: one whole PDU, before it is decoded."""
        if event.data[:1] == _P_DATA_TF:
            self._state(event.assoc).pending_bytes += len(event.data)

    def message_received(self, event: evt.Event) -> None:
        """EVT_DIMSE_RECV: a DIMSE message (command and data set) is complete."""
        self._state(event.assoc).pending_bytes = 0

    def ignored(self, assoc: Any, sop_class: str) -> None:
        self._state(assoc).ignored[sop_class] += 1

    def connection_closed(self, event: evt.Event) -> None:
        """EVT_CONN_CLOSE: log the summaries and forget the association."""
        with self._lock:
            state = self._states.pop(event.assoc, None)
        if state is None:
            return
        if state.ignored:
            log_event(
                LOG,
                "ignored_instances",
                message="storage objects acknowledged but not analysed (no file kept)",
                count=sum(state.ignored.values()),
                sop_classes={uid: _sop_class_count(uid, n) for uid, n in state.ignored.items()},
                **_who(event),
            )
        if state.pending_bytes:
            log_event(
                LOG,
                "store_interrupted",
                level=logging.WARNING,
                message="peer closed the connection in the middle of a message; nothing stored",
                bytes_received=state.pending_bytes,
                **_who(event),
            )


def _sop_class_count(sop_class: str, count: int) -> dict[str, Any]:
    return {"name": uids.UID(sop_class).name, "count": count}


def _safe_uid(value: Any) -> str:
    """A UID for a log line: printable and bounded even when the peer sent garbage."""
    text = str(value) if value is not None else ""
    return text.encode("ascii", "backslashreplace").decode()[:80]


# --- handlers (bound with their collaborators) ---------------------------------------------


def handle_store(event: evt.Event, intake: Intake) -> int | Dataset:
    return intake.store(event)


def handle_echo(event: evt.Event) -> int:
    log_event(LOG, "echo", level=logging.DEBUG, **_who(event))
    return status.SUCCESS


def handle_requested(event: evt.Event, policy: AccessPolicy) -> None:
    """Reject an unknown caller before any negotiation, saying who was refused."""
    requestor = event.assoc.requestor
    primitive = requestor.primitive
    calling_ae = primitive.calling_ae_title if primitive else ""
    called_ae = primitive.called_ae_title if primitive else ""
    reason = policy.refusal(calling_ae, str(requestor.address), called_ae)
    if reason is None:
        return
    log_event(
        LOG,
        "association_rejected",
        level=logging.WARNING,
        calling_ae="" if calling_ae == UNUSABLE_AE_TITLE else calling_ae.strip(),
        peer=f"{requestor.address}:{requestor.port}",
        reason=reason,
    )
    diagnostic = _NO_REASON_GIVEN
    if reason.startswith("called AE"):
        diagnostic = _CALLED_AE_NOT_RECOGNISED
    elif "AE title" in reason:
        diagnostic = _CALLING_AE_NOT_RECOGNISED
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
    def serving(self) -> bool:
        """True between start() and stop(): associations are accepted."""
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            return self.node.port
        return int(self._server.server_address[1])

    def start(self) -> None:
        journal = self.intake.journal
        handlers: list[Any] = [
            (evt.EVT_C_STORE, handle_store, [self.intake]),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_REQUESTED, handle_requested, [self.policy]),
            (evt.EVT_ESTABLISHED, handle_established),
            (evt.EVT_DATA_RECV, journal.data_received),
            (evt.EVT_DIMSE_RECV, journal.message_received),
            (evt.EVT_CONN_CLOSE, journal.connection_closed),
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
            other_sop_classes=self.node.other_sop_classes,
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
    """The node's AE: CR/DX (and Verification) always; with `other_sop_classes = "ignore"`
    every other storage SOP class pynetdicom knows, with any transfer syntax pydicom knows."""
    _accept_padded_ae_titles()
    ae = AE(ae_title=node.ae_title)
    ae.maximum_pdu_size = node.max_pdu_bytes
    ae.network_timeout = node.network_timeout_seconds
    ae.acse_timeout = node.network_timeout_seconds
    ae.dimse_timeout = node.network_timeout_seconds
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    if node.other_sop_classes == "ignore":
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax not in STORAGE_SOP_CLASSES:
                ae.add_supported_context(context.abstract_syntax, list(OTHER_TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    return ae


# --- tolerance towards real peers -----------------------------------------------------------


def _ae_title_from_pdu(value: str | bytes | None) -> str:
    """An AE title field as dcmtk reads it: space and NUL padding stripped (either end).

    A field with nothing usable left (blank, control characters, non-ASCII) becomes
    UNUSABLE_AE_TITLE, so that the association reaches EVT_REQUESTED and is rejected there with
    an A-ASSOCIATE-RJ and one log line, instead of failing inside pynetdicom's PDU decoder.
    """
    if not isinstance(value, bytes):
        return str(value)
    text = value.decode("ascii", errors="replace").strip(" \x00")
    if not text or not validate_ae(text)[0]:
        return UNUSABLE_AE_TITLE
    return text


class _PaddingTolerantAssociateRQ(A_ASSOCIATE_RQ):
    """pynetdicom's A-ASSOCIATE-RQ PDU, but the AE title fields go through _ae_title_from_pdu.

    pynetdicom strips only spaces and then refuses NUL as a control character: the PDU fails to
    decode and the peer is aborted, although dcmtk (and the peers built on it) pad with NUL.
    """

    @property
    def called_ae_title(self) -> str:
        return self._called_aet

    @called_ae_title.setter
    def called_ae_title(self, value: str | bytes | None) -> None:
        self._called_aet = _ae_title_from_pdu(value)

    @property
    def calling_ae_title(self) -> str:
        return self._calling_aet

    @calling_ae_title.setter
    def calling_ae_title(self, value: str | bytes | None) -> None:
        self._calling_aet = _ae_title_from_pdu(value)

    def decode(self, bytestream: bytes) -> None:
        super().decode(bytestream)
        # Decoded: from here on it is pynetdicom's own PDU (its handlers dispatch on the type).
        self.__class__ = A_ASSOCIATE_RQ


def _accept_padded_ae_titles() -> None:
    """Decode received A-ASSOCIATE-RQ PDUs with _PaddingTolerantAssociateRQ. pynetdicom picks
    the PDU class from its `dul._PDU_TYPES` table (no public hook); idempotent."""
    _PDU_TYPES[b"\x01"] = (_PaddingTolerantAssociateRQ, "Evt6")
