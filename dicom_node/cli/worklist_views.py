"""What `dicom-node status` and `studies list` do and show, without typer: the typer commands
(dicom_node.cli.node_commands) and the plain command lines (dicom_node.cli.quick) both call
these functions, so both paths behave and print alike. Exit statuses are SystemExit."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from dicom_node.cli.plain import (
    CliError,
    console,
    print_json,
    print_table,
    read_worklist,
    settings_from,
    user_errors,
)
from dicom_node.settings import Settings

if TYPE_CHECKING:
    from storage.states import StudyState


def status(config: Path | None = None, as_json: bool = False, check: bool = False) -> None:
    """`dicom-node status`: the verdict and its reasons, then the service, model,
    destinations, queues and studies (tables, or JSON with `as_json`); with `check`, only the
    verdict and reasons, and the exit status 0 healthy, 1 degraded, 2 down."""
    with user_errors():
        settings = settings_from(config)
        report = _status_report(settings)
    health = report["health"]
    if check:
        if as_json:
            print_json(health)
        else:
            console.print(health["level"], highlight=False)
            for reason in health["reasons"]:
                console.print(reason, highlight=False, markup=False, soft_wrap=True)
        raise SystemExit(health["exit_code"])
    if as_json:
        print_json(report)
        return
    _print_status(settings, report)


def studies_list(
    config: Path | None = None, state: str | None = None, limit: int = 100, as_json: bool = False
) -> None:
    """`dicom-node studies list`: at most `limit` studies (in `state`), the latest first."""
    with user_errors():
        wanted = parse_state(state)
        with read_worklist(settings_from(config)) as reader:
            studies = reader.list_studies(wanted, limit)
    if as_json:
        print_json([jsonable(s) for s in studies])
        return
    print_table(
        "Studies" + (f" in {wanted}" if wanted else ""),
        ["Study Instance UID", "state", "instances", "last arrival", "attempts", "error"],
        [
            [
                s.study_instance_uid,
                s.state.value,
                s.instance_count,
                iso_time(s.last_arrival_at),
                s.attempts,
                s.last_error or s.skip_reason or "",
            ]
            for s in studies
        ],
    )


def _print_status(settings: Settings, report: dict[str, Any]) -> None:
    from dicom_node.health import age_text

    spool, health, out = report["spool"], report["health"], report["outbound"]
    colour = {"healthy": "green", "degraded": "yellow", "down": "red"}[health["level"]]
    oldest = out["oldest_pending_seconds"]
    console.print(
        f"[bold]{settings.node.ae_title}[/] port {settings.node.port}: "
        f"[bold {colour}]{health['level'].upper()}[/]\n"
        + "".join(f"  - {escape(reason)}\n" for reason in health["reasons"])
        + f"service  {_service_line(report['processes'])}\n"
        f"data     {report['data_dir']}\ndatabase {report['database']}\n"
        f"spool    {_mib(spool['used_bytes'])} MiB in {spool['files']} files; free "
        f"{_mib(spool['free_bytes'])} MiB (floor {_mib(spool['min_free_bytes'])} MiB)"
        + ("  [red]BELOW FLOOR: stores are refused[/]" if spool["below_floor"] else "")
        + "\n" + _model_line(report["model"], report["model_state"]) + "\n"
        + "".join(f"card     {escape(c['card'])}\n" for c in report["model"]["checkpoints"])
        + f"outbound {out['pending']} PENDING"
        + (f" (oldest {age_text(oldest)})" if oldest is not None else "")
        + f", {out['dead']} DEAD, {out['sent']} SENT\n"
        + "".join(f"         {count} of them for {escape(name)}, no longer configured: "
                  "sent once it is configured again\n"
                  for name, count in out.get("pending_for_unconfigured", {}).items())
        + f"failed   {report['failed_last_24h']} studies FAILED in the last 24 h\n"
        f"ignored  {report['ignored_instances']} instances of other SOP classes "
        "acknowledged, not kept",
        highlight=False,
        soft_wrap=True,
    )
    if report["destinations"]:
        print_table("Destinations", ["destination", "state", "pending", "dead", "last success"],
                    [[d["name"], d["state"], d["pending"], d["dead"],
                      iso_time(d["last_success_at"]) or "never"] for d in report["destinations"]])
    print_table("Studies by state", ["state", "studies"], list(report["states"].items()))
    print_table(
        "Latest arrivals",
        ["received", "SOP Instance UID", "Study Instance UID", "modality", "view", "calling AE"],
        [
            [
                a["received_at"],
                a["sop_instance_uid"],
                a["study_instance_uid"],
                a["modality"],
                a["view_position"],
                a["calling_ae_title"],
            ]
            for a in report["last_arrivals"]
        ],
    )


def _service_line(processes: list[dict[str, Any]]) -> str:
    from dicom_node.health import age_text

    live = [p for p in processes if p["running"]]
    if not live:
        last = min((p["age_seconds"] for p in processes), default=None)
        return "[red]NOT RUNNING[/]" + (
            f" (last heartbeat {age_text(last)} ago)" if last is not None else "")
    return "; ".join(f"{p['role']} running ({p['process']}, beat {age_text(p['age_seconds'])}"
                     " ago)" for p in live)


def _status_report(settings: Settings) -> dict[str, Any]:
    from dicom_node.node_status import status_report

    with read_worklist(settings) as reader:
        return status_report(settings, reader, datetime.now(UTC))


def _model_line(model: dict[str, Any], running: dict[str, Any]) -> str:
    caveat = "" if model["clinical_use"] else " (NOT FOR CLINICAL USE)"
    missing = [c["path"] for c in model["checkpoints"] if not c["present"]]
    if running["state"] == "loaded":
        state = "[green]loaded[/]"
    elif running["state"] in ("missing", "corrupt", "failed"):
        state = f"[red]{running['state'].upper()}: {escape(running['error'] or '')}[/]"
    elif running["state"] == "loading":
        state = "loading"
    elif not model["checkpoints"]:
        state = "[red]no checkpoint configured: studies wait in QUEUED[/]"
    elif missing:
        state = f"[red]MISSING {', '.join(missing)}: studies wait in QUEUED[/]"
    else:
        state = f"{len(model['checkpoints'])} checkpoint(s) present"
    return f"model    {model['name']}{caveat}: {state}"


def parse_state(state: str | None) -> StudyState | None:
    from storage.states import StudyState
    if state is None:
        return None
    try:
        return StudyState(state.upper())
    except ValueError:
        known = ", ".join(s.value for s in StudyState)
        raise CliError(f"unknown state {state!r} (known: {known})") from None


def safe_url(settings: Settings) -> str:
    from storage.reader import display_url
    return display_url(settings.database_url)


def jsonable(record: Any) -> dict[str, Any]:
    from storage.states import StudyState
    return {
        k: (iso_time(v) if isinstance(v, datetime) else v.value if isinstance(v, StudyState) else v)
        for k, v in dataclasses.asdict(record).items()
    }


def iso_time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"
