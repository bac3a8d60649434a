"""The per-study work-list states and which transitions between them are legal.

RECEIVING -> QUEUED -> PROCESSING -> DONE | SKIPPED | FAILED. PROCESSING holds a lease; an expired
lease returns the study to QUEUED (or FAILED after max_attempts). A late instance reopens a
QUEUED or finished study to RECEIVING so that the quiet period starts again.
"""

from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    RECEIVING = "RECEIVING"  #: instances are arriving; not yet quiet for stable_seconds
    QUEUED = "QUEUED"  #: complete, waiting for a worker to claim it
    PROCESSING = "PROCESSING"  #: claimed by a worker that holds a lease until lease_until
    DONE = "DONE"  #: the worker produced a result
    SKIPPED = "SKIPPED"  #: nothing to do (e.g. no eligible frontal image)
    FAILED = "FAILED"  #: gave up after max_attempts or a permanent error; see last_error


# The enums of the other tables live here too, beside the state machine's, so that readers of
# the work list (storage.views, storage.sqlite_reader) need not import SQLAlchemy's models.


class OutboundState(StrEnum):
    PENDING = "PENDING"  #: to be sent at next_attempt_at (or being sent, see storage.outbound)
    SENT = "SENT"  #: the destination acknowledged it; never sent again
    DEAD = "DEAD"  #: a refusal that retrying cannot fix (never an outage); see last_error


class DestinationStatus(StrEnum):
    UP = "UP"  #: deliveries go as they fall due
    DOWN = "DOWN"  #: unreachable (refused, timed out, aborted); probed by C-ECHO on a backoff
    REFUSING = "REFUSING"  #: reachable but rejects associations or is out of resources


FINISHED_STATES: frozenset[StudyState] = frozenset(
    {StudyState.DONE, StudyState.SKIPPED, StudyState.FAILED}
)

# States a late (new) instance moves back to RECEIVING. PROCESSING is not here: the worker keeps
# its lease and the study is reopened when the worker finishes (see worklist.finish).
REOPENABLE_STATES: frozenset[StudyState] = FINISHED_STATES | {StudyState.QUEUED}

TRANSITIONS: dict[StudyState, frozenset[StudyState]] = {
    StudyState.RECEIVING: frozenset({StudyState.QUEUED}),
    StudyState.QUEUED: frozenset({StudyState.PROCESSING, StudyState.RECEIVING}),
    StudyState.PROCESSING: frozenset(
        {StudyState.DONE, StudyState.SKIPPED, StudyState.FAILED, StudyState.QUEUED}
    ),
    StudyState.DONE: frozenset({StudyState.RECEIVING}),
    StudyState.SKIPPED: frozenset({StudyState.RECEIVING}),
    StudyState.FAILED: frozenset({StudyState.RECEIVING}),
}


class WorklistError(Exception):
    """Base class of work-list errors."""


class InvalidTransition(WorklistError):
    """The study was not in the state the transition expects (someone else moved it first)."""


class LeaseLost(InvalidTransition):
    """The worker no longer holds the study's lease (it expired and was requeued or re-claimed)."""


def can_transition(current: StudyState, target: StudyState) -> bool:
    return target in TRANSITIONS[current]
