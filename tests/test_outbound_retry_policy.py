"""The backoff policy: how long to wait after each failed delivery, and when to give up."""

from __future__ import annotations

import pytest

from dicom_node.sender import DeliveryError, RetryPolicy

POLICY = RetryPolicy(max_attempts=5, initial_delay_seconds=10, max_delay_seconds=60,
                     multiplier=2)
TRANSIENT = DeliveryError("association with PACS@127.0.0.1:4242 failed")
PERMANENT = DeliveryError("C-STORE status 0xA900", permanent=True)


@pytest.mark.parametrize(
    ("attempts", "error", "expected"),
    [
        (1, TRANSIENT, 10),  # first failure: the initial delay
        (2, TRANSIENT, 20),
        (3, TRANSIENT, 40),
        (4, TRANSIENT, 60),  # 80 capped at max_delay_seconds
        (5, TRANSIENT, None),  # max_attempts reached: DEAD
        (9, TRANSIENT, None),
        (1, PERMANENT, None),  # retrying cannot help: DEAD at once
    ],
)
def test_decide(attempts, error, expected):
    assert POLICY.decide(attempts, error) == expected


def test_a_single_attempt_policy_never_retries():
    assert RetryPolicy(1, 10, 60).decide(1, TRANSIENT) is None
