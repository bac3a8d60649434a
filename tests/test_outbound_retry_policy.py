"""The backoff policy: how long an object waits after the PACS failed it, and when it is DEAD.
An outage is the destination's business (probes), never counted here."""

from __future__ import annotations

import pytest

from dicom_node.outcomes import Verdict
from dicom_node.sender import RetryPolicy

POLICY = RetryPolicy(max_attempts=5, initial_delay_seconds=10, max_delay_seconds=60,
                     multiplier=2)


@pytest.mark.parametrize(
    ("attempts", "verdict", "expected"),
    [
        (1, Verdict.RETRY, 10),  # first failure: the initial delay
        (2, Verdict.RETRY, 20),
        (3, Verdict.RETRY, 40),
        (4, Verdict.RETRY, 60),  # 80 capped at max_delay_seconds
        (50, Verdict.RETRY, 60),  # a failure that can pass is never DEAD
        (4, Verdict.RETRY_LIMITED, 60),
        (5, Verdict.RETRY_LIMITED, None),  # max_attempts of unknown failures: DEAD
        (1, Verdict.DEAD, None),  # retrying cannot help: DEAD at once
    ],
)
def test_decide(attempts, verdict, expected):
    assert POLICY.decide(attempts, verdict) == expected


def test_probe_delays_grow_to_their_cap():
    probes = RetryPolicy(0, 2, 15, 2)
    assert [probes.delay(n) for n in range(1, 6)] == [2, 4, 8, 15, 15]
