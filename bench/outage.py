"""PACS outage: how long after the PACS comes back does the last pending result reach it?

    python bench/outage.py [--minutes 1] [--studies 5] [--config PATH]

Queues the SR and summary of N results for a real Orthanc (started here, on loopback) while
Orthanc is down, runs the node's sender (the [outbound] settings of the shipped config, or of
--config) for the outage, then starts Orthanc and prints the delay from "Orthanc answers" to
"every object SENT", the number of C-ECHO probes during the outage, DEAD deliveries (must be 0)
and Orthanc's instance count (must be 2 x N: one copy of each). With the shipped settings the
probe backoff caps at probe_max_delay_seconds, so the delay stays under about that much
whatever the outage's length.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dicom_node.logs import configure_logging
from dicom_node.sender import Sender
from dicom_node.settings import DestinationSettings, LoggingSettings, load_settings
from storage import destinations, outbound
from storage.db import open_database
from storage.models import OutboundState
from storage.spool import Spool
from tests.outbound_samples import queue_result
from tests.peers import OrthancPeer


def _counts(database) -> dict[OutboundState, int]:
    with database.read_only() as session:
        return outbound.state_counts(session)


def run(minutes: float, studies: int, config: str | None, workdir: Path) -> None:
    settings = load_settings(config)
    database = open_database(f"sqlite:///{workdir / 'worklist.sqlite'}")
    outbox = Spool(workdir / "outbox")
    outbox.prepare()
    orthanc = OrthancPeer(workdir / "orthanc")
    for _ in range(studies):
        queue_result(database, outbox, ["pacs"])
    pacs = DestinationSettings(name="pacs", ae_title=orthanc.ae_title, host="127.0.0.1",
                               port=orthanc.dicom_port)
    sender = Sender(database=database, outbox_root=outbox.root, destinations=[pacs],
                    calling_ae="AINODE", settings=settings.outbound,
                    clock=lambda: datetime.now(UTC))
    print(f"probe backoff {settings.outbound.probe_initial_delay_seconds:g} s doubling to "
          f"{settings.outbound.probe_max_delay_seconds:g} s; {2 * studies} objects queued; "
          f"Orthanc down for {minutes:g} min", flush=True)
    sender.start()
    try:
        time.sleep(minutes * 60)
        with database.read_only() as session:
            state = destinations.get(session, "pacs")
        orthanc.start()  # returns once Orthanc answers HTTP and C-ECHO
        up = time.monotonic()
        while _counts(database)[OutboundState.SENT] < 2 * studies:
            if time.monotonic() - up > 600:
                raise SystemExit("not delivered within 10 minutes of Orthanc coming back")
            time.sleep(0.05)
        delay = time.monotonic() - up
        counts = _counts(database)
        print(f"state during the outage: {state.state.value.lower() if state else 'up'}, "
              f"{state.failures if state else 0} failed probes")
        print(f"PACS up -> last delivery: {delay:.2f} s")
        print(f"DEAD: {counts[OutboundState.DEAD]}; Orthanc instances: "
              f"{orthanc.instance_count()} (expected {2 * studies})")
    finally:
        sender.stop()
        orthanc.stop()
        database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="outage length")
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--config", default=None, help="node TOML with [outbound] settings")
    args = parser.parse_args()
    configure_logging(LoggingSettings(level="ERROR", format="text"))  # a failed probe is expected
    with tempfile.TemporaryDirectory(prefix="outage-") as tmp:
        run(args.minutes, args.studies, args.config, Path(tmp))


if __name__ == "__main__":
    main()
