"""DICOM status codes by name (PS3.4 Annex B.2 storage, PS3.7 Annex C), and the one mapping
from intake failures to the status a peer receives. Handlers never write raw hex."""

from __future__ import annotations

from storage.spool import InvalidUID

SUCCESS = 0x0000
# Failures (PS3.4 Table B.2-1 and PS3.7 C.4.2)
OUT_OF_RESOURCES = 0xA700  # refused: out of resources (e.g. free disk below the floor)
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND_UIDS = 0xC210  # a UID needed to file the instance is missing or invalid
CANNOT_UNDERSTAND_DATASET = 0xC212  # the data set could not be parsed
PROCESSING_FAILURE = 0x0110  # our side failed (spool or database); the peer may retry
SOP_CLASS_NOT_SUPPORTED = 0x0122

_DESCRIPTIONS = {
    SUCCESS: "Success",
    OUT_OF_RESOURCES: "Refused: Out of Resources",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "Error: Data Set does not match SOP Class",
    CANNOT_UNDERSTAND_UIDS: "Error: Cannot understand (UIDs)",
    CANNOT_UNDERSTAND_DATASET: "Error: Cannot understand (data set)",
    PROCESSING_FAILURE: "Processing failure",
    SOP_CLASS_NOT_SUPPORTED: "SOP Class not supported",
}


class IntakeRefused(Exception):
    """A C-STORE that the node refuses for a reason the peer should hear about."""

    status = PROCESSING_FAILURE


class OutOfResources(IntakeRefused):
    status = OUT_OF_RESOURCES


class DatasetMismatch(IntakeRefused):
    status = DATASET_DOES_NOT_MATCH_SOP_CLASS


class UnreadableDataset(IntakeRefused):
    status = CANNOT_UNDERSTAND_DATASET


class UnsupportedSOPClass(IntakeRefused):
    status = SOP_CLASS_NOT_SUPPORTED


def status_for(exc: BaseException) -> int:
    """The status to answer when storing failed with `exc`."""
    if isinstance(exc, IntakeRefused):
        return exc.status
    if isinstance(exc, InvalidUID):
        return CANNOT_UNDERSTAND_UIDS
    return PROCESSING_FAILURE


def describe(status: int) -> str:
    return _DESCRIPTIONS.get(status, f"status 0x{status:04X}")
