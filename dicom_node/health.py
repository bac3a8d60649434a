"""Whether the node is healthy, degraded or down, from what the work list knows: heartbeats of
the running processes (and their model state), destination states, the outbound queue, FAILED
studies and the spool's free space. The service layer behind `dicom-node status` and
`status --check`; `assess` is the pure rule book (README "Health").

Rules, in words:
- down (2): no `serve` process has beaten within 3 heartbeat intervals (nothing receives), or
  a running worker's model failed to load (checkpoint missing, corrupt, or other error);
- degraded (1): a destination is down or refusing; DEAD deliveries exist; studies FAILED in
  the last 24 h; the oldest PENDING delivery is older than `[outbound] pending_alert_seconds`;
  the spool's free space is below `[node] min_free_disk_mb` (stores are refused); no running
  process runs an inference worker, or its model is still loading;
- healthy (0): none of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from dicom_node import destinations
from dicom_node.heartbeat import LOADED, LOADING, MODEL_NOT_READY, OFF, stale_after_seconds
from dicom_node.settings import Settings
from storage.reader import WorkListReader
from storage.states import OutboundState
from storage.views import HeartbeatView

HEALTHY, DEGRADED, DOWN = "healthy", "degraded", "down"
EXIT_CODES = {HEALTHY: 0, DEGRADED: 1, DOWN: 2}
FAILED_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class HealthFacts:
    """What `assess` judges: one snapshot of the node."""

    serving: bool  # a `serve` process beat recently
    model_states: tuple[tuple[str, str | None], ...] = ()  # (state, reason) per live process
    destinations: tuple[tuple[str, str], ...] = ()  # (name, up|down|refusing|not contacted)
    dead: int = 0
    oldest_pending_seconds: float | None = None
    pending_alert_seconds: float = 900
    failed_24h: int = 0
    below_disk_floor: bool = False


def assess(facts: HealthFacts) -> tuple[str, list[str]]:
    """(healthy | degraded | down, the reasons in words, the down ones first)."""
    down, degraded = [], []
    if not facts.serving:
        down.append("serve is not running (no fresh heartbeat)")
    for state, reason in facts.model_states:
        if state in MODEL_NOT_READY:
            down.append(f"model {state}: {reason}")
    running = [state for state, _ in facts.model_states if state != OFF]
    if facts.serving and not running:
        degraded.append("no inference worker is running: studies wait in QUEUED")
    elif running and all(state == LOADING for state in running):
        degraded.append("model still loading")
    degraded += [f"destination {name} is {state}" for name, state in facts.destinations
                 if state in ("down", "refusing")]
    if facts.dead:
        degraded.append(f"{facts.dead} DEAD deliveries (see `outbound list --state DEAD`)")
    if (facts.oldest_pending_seconds is not None
            and facts.oldest_pending_seconds > facts.pending_alert_seconds):
        degraded.append(f"oldest PENDING delivery waits {age_text(facts.oldest_pending_seconds)}"
                        f" (alert after {age_text(facts.pending_alert_seconds)})")
    if facts.failed_24h:
        degraded.append(f"{facts.failed_24h} studies FAILED in the last 24 h")
    if facts.below_disk_floor:
        degraded.append("spool free space below min_free_disk_mb: stores are refused")
    level = DOWN if down else DEGRADED if degraded else HEALTHY
    return level, down + degraded


def health_report(
    settings: Settings, reader: WorkListReader, now: datetime, below_disk_floor: bool
) -> dict[str, Any]:
    """The node's state for `status` (JSON-ready): processes, model, destinations, outbound,
    FAILED in 24 h, and the verdict with its reasons under "health". PENDING objects for a
    destination no longer configured are counted under outbound "pending_for_unconfigured"
    ({name: count}) and left out of the oldest-PENDING alarm."""
    stale = stale_after_seconds(settings.node.heartbeat_seconds)
    totals = reader.outbound_state_counts()
    per_destination = reader.destination_counts()
    failed = reader.failed_since(now - FAILED_WINDOW)
    processes = [_process(b, now, stale) for b in reader.heartbeats()]
    live = [p for p in processes if p["running"]]
    configured = {d.name for d in settings.destinations}
    # Objects for a destination taken out of the configuration wait until it is back; nothing
    # can send them, so they are listed apart instead of raising the oldest-PENDING alarm.
    unconfigured = {name: c.pending for name, c in sorted(per_destination.items())
                    if name not in configured and c.pending}
    oldest = min((c.oldest_pending_at for name, c in per_destination.items()
                  if name in configured and c.oldest_pending_at is not None), default=None)
    oldest_age = (now - oldest).total_seconds() if oldest else None
    overview = destinations.overview(settings, reader)
    facts = HealthFacts(
        serving=any(p["role"] == "serve" for p in live),
        model_states=tuple((p["model_state"], p["model_error"]) for p in live),
        destinations=tuple((d.name, d.state) for d in overview),
        dead=totals[OutboundState.DEAD], oldest_pending_seconds=oldest_age,
        pending_alert_seconds=settings.outbound.pending_alert_seconds,
        failed_24h=failed, below_disk_floor=below_disk_floor,
    )
    level, reasons = assess(facts)
    return {
        "health": {"level": level, "exit_code": EXIT_CODES[level], "reasons": reasons},
        "processes": processes,
        "model_state": _model_state(live),
        "destinations": [d.as_dict() for d in overview],
        "outbound": {"pending": totals[OutboundState.PENDING],
                     "dead": totals[OutboundState.DEAD], "sent": totals[OutboundState.SENT],
                     "oldest_pending_seconds": oldest_age,
                     "pending_for_unconfigured": unconfigured},
        "failed_last_24h": failed,
    }


def _process(beat: HeartbeatView, now: datetime, stale: float) -> dict[str, Any]:
    age = (now - beat.beat_at).total_seconds()
    return {"process": beat.process_id, "role": beat.role, "started_at": beat.started_at,
            "beat_at": beat.beat_at, "age_seconds": round(age, 1), "running": age <= stale,
            "model_state": beat.model_state, "model_error": beat.model_error}


def _model_state(live: list[dict[str, Any]]) -> dict[str, Any]:
    """The model as the running processes report it: the worst state wins."""
    order = [*sorted(MODEL_NOT_READY), LOADING, LOADED]
    states = [p for p in live if p["model_state"] != OFF]
    if not states:
        return {"state": "not running", "error": None}
    worst = min(states, key=lambda p: order.index(p["model_state"])
                if p["model_state"] in order else 0)
    return {"state": worst["model_state"], "error": worst["model_error"]}


def age_text(seconds: float) -> str:
    """12 s, 4 min, 3.5 h, 2 d: an age for people."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"
