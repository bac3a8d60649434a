"""`dicom-node worker` (inference and delivery without the listener) and
`dicom-node outbound list|retry|resend` (the delivery queue)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from dicom_node.cli.common import (
    CliError,
    ConfigOption,
    JsonOption,
    console,
    open_worklist,
    print_json,
    print_table,
    settings_from,
    user_errors,
)
from dicom_node.cli.typer_app import app
from dicom_node.settings import Settings

if TYPE_CHECKING:
    from storage import outbound
    from storage.models import OutboundState

outbound_app = typer.Typer(help="Deliveries of SRs and summary images.", no_args_is_help=True)
app.add_typer(outbound_app, name="outbound")


IdsArgument = typer.Argument(None, help="Delivery ids (see `outbound list`).")
DestinationOption = typer.Option(
    None, "--destination", help="Only this destination (repeatable); default: all.")


def _now() -> datetime:
    return datetime.now(UTC)


@app.command()
def worker(
    config: Path | None = ConfigOption,
    once: bool = typer.Option(False, "--once", help="Process what is queued now, then exit."),
    send: bool = typer.Option(True, "--send/--no-send", help="Also deliver to destinations."),
    concurrency: int = typer.Option(
        1, "--concurrency", min=1, max=64,
        help="Studies processed at a time: N worker threads sharing one loaded model."),
    as_json: bool = JsonOption,
) -> None:
    """Run the inference worker and the sender without the DICOM listener.

    It also queues quiet studies and returns expired leases, so it works
    beside `serve` or alone, on this host or another sharing the work list.
    """
    from dicom_node.heartbeat import Heartbeat
    from dicom_node.logs import configure_logging
    from dicom_node.wakeups import Wakeups
    from dicom_node.worker import make_sender, make_workers, outbox_for
    from storage.wakeups import OUTBOUND, QUEUED

    with user_errors():
        settings = settings_from(config)
        configure_logging(settings.logging)
        database = open_worklist(settings)
        outbox_for(settings).prepare()
        sender = make_sender(settings, database, _now) if send else None
        try:
            runners = make_workers(settings, database, _now, concurrency, sender)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CliError(f"cannot load the model {settings.model.name}: {exc}") from None
        if once:
            _run_once(runners, sender, settings, as_json)
        else:
            heartbeat = Heartbeat(database, "worker", settings.node.heartbeat_seconds, _now,
                                  runners[0].model_status)
            wakeups = Wakeups(database) if Wakeups.supported(database) else None
            if wakeups is not None:
                for runner in runners:
                    wakeups.on(QUEUED, runner.wake)
                if sender is not None:
                    wakeups.on(OUTBOUND, sender.wake)
            _run_until_signalled(runners, sender, heartbeat, wakeups)
        database.dispose()


def _run_once(runners: Sequence[Any], sender: Any, settings: Settings, as_json: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    runners[0].release_gone_leases(starting=True)

    def drain(runner: Any) -> list[Any]:
        done = []
        while (outcome := runner.run_once()) is not None:
            done.append(outcome)
        return done

    with ThreadPoolExecutor(len(runners)) as pool:
        outcomes = [o for done in pool.map(drain, runners) for o in done]
    if sender is not None:
        for destination in settings.destinations:
            while sender.send_due(destination.name):
                pass
    rows = [
        {"study_instance_uid": o.study_instance_uid, "state": o.state.value if o.state else None,
         "version": o.version, "reason": o.reason}
        for o in outcomes
    ]
    if as_json:
        print_json(rows)
        return
    print_table("Processed studies", ["Study Instance UID", "state", "result version", "reason"],
                [list(r.values()) for r in rows])


def _run_until_signalled(
    runners: Sequence[Any], sender: Any, heartbeat: Any, wakeups: Any
) -> None:
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    components = [c for c in (heartbeat, wakeups, sender, *runners) if c is not None]
    try:
        for component in components:
            component.start()
        while not stop.wait(timeout=1.0):
            pass
    finally:
        for component in reversed(components):
            component.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@outbound_app.command("list")
def outbound_list(
    config: Path | None = ConfigOption,
    state: str | None = typer.Option(None, "--state", help="PENDING, SENT or DEAD."),
    limit: int = typer.Option(200, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = JsonOption,
) -> None:
    """Deliveries: one row per object (SR, summary image) and destination."""
    from storage import outbound
    from storage.models import OutboundState
    with user_errors():
        wanted = _parse_state(state)
        database = open_worklist(settings_from(config), read_only=True)
        with database.read_only() as session:
            rows = outbound.list_deliveries(session, wanted, limit)
        database.dispose()
    if as_json:
        print_json([_jsonable(d) for d in rows])
        return
    table = Table(title="Outbound" + (f" {wanted.value}" if wanted else ""),
                  title_justify="left")
    for column in ("id", "destination", "kind", "state", "tries", "next attempt"):
        table.add_column(column)
    table.add_column("SOP Instance UID", overflow="fold")
    now = _now()
    for d in rows:
        due = _short_time(d.next_attempt_at, now) if d.state is OutboundState.PENDING else ""
        table.add_row(str(d.id), d.destination, d.kind, d.state.value, str(d.attempts), due,
                      d.sop_instance_uid)
    console.print(table)
    print_notes("Last errors", [(d.id, d.last_error) for d in reversed(rows) if d.last_error],
                "id")


def print_notes(title: str, notes: Sequence[tuple[Any, str]], label: str) -> None:
    """Long texts below a table, one line each, with the keys that share a text collapsed
    ("ids 1, 2: connection refused ..."): a table at 80 columns has no room for them."""
    shared: dict[str, list[str]] = {}
    for key, text in notes:
        shared.setdefault(text, []).append(str(key))
    if not shared:
        return
    console.print(f"{title}:", highlight=False, markup=False)
    for text, keys in shared.items():
        keys_text = f"{label}{'s' if len(keys) > 1 else ''} " if label else ""
        console.print(f"  {keys_text}{', '.join(keys)}: {text}", highlight=False,
                      markup=False)


def _short_time(value: datetime, now: datetime) -> str:
    """HH:MM:SS within a day of `now`, else the date."""
    return f"{value:%H:%M:%S}" if abs(value - now) < timedelta(days=1) else f"{value:%Y-%m-%d}"


@outbound_app.command("retry")
def outbound_retry(
    ids: list[int] | None = IdsArgument,
    all_dead: bool = typer.Option(False, "--all-dead", help="Every DEAD delivery."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Send DEAD (or waiting) deliveries again now, with a fresh set of attempts. An object a
    destination acknowledged is never sent to it again."""
    from dicom_node import destinations
    from dicom_node.audit import cli_actor
    from storage import outbound
    with user_errors():
        if not ids and not all_dead:
            raise CliError("name delivery ids or use --all-dead")
        settings = settings_from(config)
        database = open_worklist(settings)
        try:
            retried = destinations.retry_deliveries(settings, database, _now(), actor=cli_actor(),
                                                    ids=ids or (), all_dead=all_dead)
        except outbound.OutboundError as exc:
            raise CliError(str(exc)) from None
        finally:
            database.dispose()
    if as_json:
        print_json({"retried": retried})
        return
    print_table("Queued again", ["id"], [[i] for i in retried])


@outbound_app.command("resend")
def outbound_resend(
    study_uid: str = typer.Argument(..., help="Study Instance UID."),
    destination: list[str] | None = DestinationOption,
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Queue a study's current SR and summary again, even to a destination that acknowledged
    them (a destination added later, a PACS that lost them, a second PACS)."""
    from dicom_node import destinations
    from dicom_node.audit import cli_actor
    from storage import outbound

    with user_errors():
        settings = settings_from(config)
        database = open_worklist(settings)
        try:
            queued = destinations.resend(settings, database, study_uid, _now(),
                                         destination or (), actor=cli_actor())
        except outbound.OutboundError as exc:
            raise CliError(str(exc)) from None
        finally:
            database.dispose()
    if as_json:
        print_json({"queued": queued})
        return
    print_table(f"Queued again for study {study_uid}", ["id"], [[i] for i in queued])


def _parse_state(state: str | None) -> OutboundState | None:
    from storage.models import OutboundState
    if state is None:
        return None
    try:
        return OutboundState(state.upper())
    except ValueError:
        known = ", ".join(s.value for s in OutboundState)
        raise CliError(f"unknown state {state!r} (known: {known})") from None


def _jsonable(delivery: outbound.Delivery) -> dict[str, Any]:
    from storage.models import OutboundState
    return {
        k: _time(v) if isinstance(v, datetime) else v.value if isinstance(v, OutboundState) else v
        for k, v in delivery.as_dict().items()
    }


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None
