"""Which work-list holders are gone: leases, send claims, heartbeats and temporary files name
the process that holds them ("host:pid" or "host:pid:thread"); after a kill -9 nothing else
releases them. One place decides, for the worker, the sender, the heartbeat and start-up
reconciliation: on this host by asking the kernel, on any host by the age of the holder's
heartbeat row."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime


def gone_holders(
    holders: Sequence[str], host: str, own_pid: int, starting: bool = True
) -> list[str]:
    """Of `holders` ("host:pid" senders, "host:pid:thread" workers), those on `host` whose
    process no longer runs, plus, when `starting`, this process's own ids (a new process
    holds nothing yet; in a container the pid repeats). A running process's later look
    passes starting=False: its own ids are its threads' work in progress. Holders on other
    hosts are left to their heartbeats and leases."""
    gone = []
    for holder in holders:
        parts = holder.split(":")
        holder_host, pid = (parts[0], parts[1]) if len(parts) in (2, 3) else ("", "")
        if holder_host != host or not pid.isdigit():
            continue
        if (int(pid) == own_pid and starting) or (int(pid) != own_pid
                                                  and not is_running(int(pid))):
            gone.append(holder)
    return gone


def stale_holders(
    holders: Sequence[str], beats: Mapping[str, datetime], stale_before: datetime, own_pid: int,
    host: str,
) -> list[str]:
    """Of `holders`, those whose process ("host:pid", the first two parts of the holder id)
    has a heartbeat row that last beat before `stale_before`: a process on any host that
    stopped beating (killed, frozen, cut off). A holder without a heartbeat row (a `worker
    --once`, a test) is left to its lease; this process's own holders are never stale."""
    stale = []
    for holder in holders:
        process_id = ":".join(holder.split(":")[:2])
        if process_id == f"{host}:{own_pid}":
            continue
        beat_at = beats.get(process_id)
        if beat_at is not None and beat_at < stale_before:
            stale.append(holder)
    return stale


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
