"""Which work-list holders are gone: leases, send claims, heartbeats and temporary files name
the process that holds them ("host:pid" or "host:pid:thread"); after a kill -9 nothing else
releases them. One place decides, for the worker, the sender, the heartbeat and start-up
reconciliation."""

from __future__ import annotations

import os
from collections.abc import Sequence


def gone_holders(holders: Sequence[str], host: str, own_pid: int) -> list[str]:
    """Of `holders` ("host:pid" senders, "host:pid:thread" workers), those on `host` whose
    process no longer runs, plus this process's own ids (a new process holds nothing yet; in a
    container the pid repeats). Holders on other hosts are left to their leases."""
    gone = []
    for holder in holders:
        parts = holder.split(":")
        holder_host, pid = (parts[0], parts[1]) if len(parts) in (2, 3) else ("", "")
        if holder_host != host or not pid.isdigit():
            continue
        if int(pid) == own_pid or not is_running(int(pid)):
            gone.append(holder)
    return gone


def is_running(pid: int) -> bool:
    """Whether a process with this pid runs on this host (signal 0: nothing is sent)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True
