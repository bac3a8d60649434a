"""Start-up reconciliation of the spool and outbox with the work list, before the listener
starts: a spool file without an instance row (a kill between the rename and the commit; the
peer never got Success) is recorded as the listener would record it when its header is valid,
else removed; temporary files of interrupted writes (spool and outbox) whose writer process is
gone are removed. One log line with the counts."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime

import pydicom

from dicom_node.listener import STORAGE_SOP_CLASSES, Header, _checked_header
from dicom_node.logs import log_event
from dicom_node.processes import is_running
from storage import worklist
from storage.db import Database
from storage.spool import HOST_TOKEN, Spool

LOG = logging.getLogger(__name__)


def reconcile(
    database: Database, spool: Spool, outbox: Spool, clock: Callable[[], datetime]
) -> dict[str, int]:
    """Record or remove orphan spool files and remove stale temporary files; returns counts
    (recorded, removed_invalid, removed_temporary) and logs them as `spool_reconciled`."""
    counts = {"recorded": 0, "removed_invalid": 0, "removed_temporary": 0}
    with database.read_only() as session:
        known = worklist.known_spool_paths(session)
    for relative in spool.files():
        if relative in known:
            continue
        path = spool.absolute(relative)
        record = _record_for(path, relative)
        if record is None:
            path.unlink(missing_ok=True)
            counts["removed_invalid"] += 1
            continue
        with database.sessions.begin() as session:
            worklist.record_instance(session, record, clock())
        counts["recorded"] += 1
    for store in (spool, outbox):
        for path, host, pid in store.temporaries():
            if host not in ("", HOST_TOKEN):
                continue  # another host's write on a shared spool: only that host can tell
            if pid == os.getpid() or not is_running(pid):
                path.unlink(missing_ok=True)
                counts["removed_temporary"] += 1
    log_event(LOG, "spool_reconciled", host=socket.gethostname(), **counts)
    return counts


def _record_for(path: os.PathLike[str], relative: str) -> worklist.InstanceRecord | None:
    """The instance row the listener would have written for this file; None when the file is
    not a readable analysed instance whose UIDs match its place in the spool."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sop_class, sop_uid = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
        values = {k: ds.get(k) for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                                         "SeriesInstanceUID", "Modality", "BodyPartExamined",
                                         "ViewPosition")}
        header: Header = _checked_header(values, sop_class, sop_uid)
        syntax = str(ds.file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001  anything unreadable is not a recordable instance
        return None
    expected = f"{header.study_instance_uid}/{sop_uid}.dcm"
    if sop_class not in STORAGE_SOP_CLASSES or relative != expected:
        return None
    calling = str(ds.file_meta.get("SourceApplicationEntityTitle", "") or "").strip()
    return worklist.InstanceRecord(
        sop_instance_uid=sop_uid, series_instance_uid=header.series_instance_uid,
        study_instance_uid=header.study_instance_uid, sop_class_uid=sop_class,
        transfer_syntax_uid=syntax, modality=header.modality,
        body_part_examined=header.body_part_examined, view_position=header.view_position,
        spool_path=relative, size_bytes=os.path.getsize(path),
        calling_ae_title=calling[:16] or None,
    )
    return True
