"""What one delivery attempt (or C-ECHO probe) to a destination came to, in words, and what the
node does about it. Pure functions: `classify(event)` maps what happened on the wire to an
`Outcome` (a `Verdict` and a message an administrator can act on).

Verdicts, and who they are about:
- OK: stored (or echoed).
- RETRY: the PACS failed this object for a reason that can pass (Processing Failure 0x0110,
  Cancel); the object waits out its own backoff and is never DEAD for it.
- RETRY_LIMITED: a failure status of no standard storage meaning (e.g. Refused: Not Authorized,
  an unrecognized operation): retried, then DEAD after `[outbound] max_attempts` such answers.
- DEAD: retrying the same object cannot succeed (no presentation context for its SOP class,
  0xA9xx data set does not match the SOP class, 0xCxxx cannot understand, SOP class not
  supported).
- DOWN: the destination cannot be reached (connection refused, timed out, association aborted
  or unanswered). About the destination, not the object: it is probed by C-ECHO.
- REFUSING: the destination answers but refuses: the association is rejected (e.g. called AE
  title not recognised) or it is out of resources (0xA7xx). Also about the destination.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from dicom_node.status import OUT_OF_RESOURCES, PROCESSING_FAILURE, SOP_CLASS_NOT_SUPPORTED

SUCCESS = 0x0000
CANCEL = 0xFE00
WARNINGS = {
    0x0001: "Warning: Requested optional attributes are not supported",
    0x0107: "Warning: Attribute list error",
    0x0116: "Warning: Attribute value out of range",
    0xB000: "Warning: Coercion of data elements",
    0xB006: "Warning: Elements discarded",
    0xB007: "Warning: Data set does not match SOP class",
}
OUT_OF_RESOURCES_RANGE = range(OUT_OF_RESOURCES, OUT_OF_RESOURCES + 0x100)  # A700..A7FF
DATASET_MISMATCH_RANGE = range(0xA900, 0xAA00)  # A900..A9FF
CANNOT_UNDERSTAND_RANGE = range(0xC000, 0xD000)  # C000..CFFF
NAMED_FAILURES = {
    PROCESSING_FAILURE: "Processing Failure",
    SOP_CLASS_NOT_SUPPORTED: "Refused: SOP Class Not Supported",
    0x0124: "Refused: Not Authorized",
    0x0210: "Duplicate invocation",
    0x0211: "Unrecognized operation",
    0x0212: "Mistyped argument",
    CANCEL: "Cancel",
}
REJECT_RESULTS = {1: "rejected permanently", 2: "rejected transiently"}
REJECT_SOURCES = {1: "service user", 2: "service provider (ACSE)",
                  3: "service provider (presentation)"}
REJECT_REASONS = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognised",
    (1, 7): "called AE title not recognised",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
REJECT_HINTS = {
    (1, 3): "the PACS does not know this node's AE title",
    (1, 7): "check the destination's ae_title",
}


class Verdict(StrEnum):
    OK = "ok"
    RETRY = "retry"
    RETRY_LIMITED = "retry-limited"
    DEAD = "dead"
    DOWN = "down"
    REFUSING = "refusing"

    @property
    def about_destination(self) -> bool:
        """True for DOWN and REFUSING: the destination, not the object, is the problem."""
        return self in (Verdict.DOWN, Verdict.REFUSING)


@dataclass(frozen=True)
class Outcome:
    verdict: Verdict
    message: str


# -- what can happen on the wire ----------------------------------------------------------------


@dataclass(frozen=True)
class Unreachable:
    """No association: `reason` is "refused", "timeout" (after `timeout_seconds`), "aborted"
    (connected, then aborted or unanswered) or the operating system's words."""

    address: str  # AE@host:port
    reason: str
    timeout_seconds: float = 0


@dataclass(frozen=True)
class Rejected:
    """A-ASSOCIATE-RJ with its result (1, 2), source (1..3) and reason/diagnostic."""

    address: str
    result: int
    source: int
    diagnostic: int


@dataclass(frozen=True)
class NoContext:
    """The peer accepted no presentation context for this SOP class."""

    address: str
    sop_class_uid: str


@dataclass(frozen=True)
class Lost:
    """The association ended before the C-STORE response (network or DIMSE timeout, abort)."""

    address: str


@dataclass(frozen=True)
class Answered:
    """A C-STORE response with `status` (and the peer's Error Comment, if any)."""

    status: int
    comment: str = ""


@dataclass(frozen=True)
class Unreadable:
    """The object's file in the outbox could not be read."""

    path: str
    reason: str


Event = Unreachable | Rejected | NoContext | Lost | Answered | Unreadable


def classify(event: Event) -> Outcome:
    """The verdict and words for one event (see the module docstring for the verdicts)."""
    if isinstance(event, Answered):
        return _answered(event)
    if isinstance(event, Unreachable):
        return Outcome(Verdict.DOWN, _unreachable_words(event))
    if isinstance(event, Rejected):
        return Outcome(Verdict.REFUSING, _rejected_words(event))
    if isinstance(event, NoContext):
        return Outcome(Verdict.DEAD, f"{event.address} accepted no presentation context for "
                                     f"{sop_class_name(event.sop_class_uid)}")
    if isinstance(event, Lost):
        return Outcome(Verdict.DOWN, f"association with {event.address} ended before the "
                                     "C-STORE response (network or DIMSE timeout, or aborted)")
    return Outcome(Verdict.DEAD, f"outbox file {event.path} cannot be read: {event.reason}")


def sop_class_name(uid: str) -> str:
    """'Comprehensive SR Storage (1.2.840.10008.5.1.4.1.1.88.33)'; the UID alone if unknown."""
    from pydicom.uid import UID  # pydicom costs ~0.15 s: not imported by status and studies list

    name = UID(uid).name
    return uid if not name or name == uid else f"{name} ({uid})"


def _answered(event: Answered) -> Outcome:
    code, comment = event.status, f": {event.comment}" if event.comment else ""
    if code == SUCCESS:
        return Outcome(Verdict.OK, "stored")
    if code in WARNINGS:
        return Outcome(Verdict.OK, f"stored with {WARNINGS[code]} (0x{code:04X}){comment}")
    words = f"C-STORE answered {_status_words(code)} (0x{code:04X}){comment}"
    if code in (PROCESSING_FAILURE, CANCEL):
        return Outcome(Verdict.RETRY, words)
    if code in OUT_OF_RESOURCES_RANGE:
        return Outcome(Verdict.REFUSING, words)
    if code in DATASET_MISMATCH_RANGE or code in CANNOT_UNDERSTAND_RANGE or \
            code == SOP_CLASS_NOT_SUPPORTED:
        return Outcome(Verdict.DEAD, words)
    return Outcome(Verdict.RETRY_LIMITED, words)


def _status_words(code: int) -> str:
    if code in NAMED_FAILURES:
        return NAMED_FAILURES[code]
    if code in OUT_OF_RESOURCES_RANGE:
        return "Refused: Out of Resources"
    if code in DATASET_MISMATCH_RANGE:
        return "Error: Data Set Does Not Match SOP Class"
    if code in CANNOT_UNDERSTAND_RANGE:
        return "Error: Cannot Understand"
    return "an unknown failure status"


def _unreachable_words(event: Unreachable) -> str:
    if event.reason == "refused":
        return f"connection refused by {event.address} (nothing listening on that port)"
    if event.reason == "timeout":
        return (f"no connection to {event.address} within {event.timeout_seconds:g} s "
                "(timed out)")
    if event.reason == "aborted":
        return (f"association with {event.address} aborted or not answered within "
                f"{event.timeout_seconds:g} s")
    return f"cannot connect to {event.address}: {event.reason}"


def _rejected_words(event: Rejected) -> str:
    key = (event.source, event.diagnostic)
    reason = REJECT_REASONS.get(key, f"reason {event.diagnostic}")
    result = REJECT_RESULTS.get(event.result, f"result {event.result}")
    source = REJECT_SOURCES.get(event.source, f"source {event.source}")
    hint = f"; {REJECT_HINTS[key]}" if key in REJECT_HINTS else ""
    return f"association rejected by {event.address}: {reason} ({result}, {source}){hint}"
