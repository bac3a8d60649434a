"""`dicom-node serve`, `status` and `studies list|show`: running the node and looking inside."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape

from dicom_node.cli import app
from dicom_node.cli.common import (
    CliError,
    ConfigOption,
    JsonOption,
    console,
    open_worklist,
    print_json,
    print_table,
    safe_url,
    settings_from,
    user_errors,
)
from dicom_node.settings import Settings

if TYPE_CHECKING:
    from storage.spool import Spool
    from storage.states import StudyState

studies_app = typer.Typer(help="Studies in the work list.", no_args_is_help=True)
app.add_typer(studies_app, name="studies")


@app.command()
def serve(config: Path | None = ConfigOption) -> None:
    """Run the node: the DICOM listener, study assembly and everything added to the service."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_node.logs import configure_logging
    from dicom_node.startup import StartupError, check_clinical_use, check_data_dir, check_port

    with user_errors():
        settings = settings_from(config)
        configure_logging(settings.logging)
        # before the database, the model or any thread: each fails in one line
        check_data_dir(settings)
        try:
            check_port(settings)
        except StartupError as exc:
            raise CliError(str(exc)) from None
        check_clinical_use(settings)
        from dicom_node.http import attach as attach_http
        from dicom_node.http.server import HttpStartError
        from dicom_node.service import Service  # pynetdicom, scheduler, model: only when serving
        from dicom_node.worker import attach as attach_worker_and_sender
        from storage.db import SchemaTooNewError

        try:
            service = Service(settings)
        except SchemaTooNewError as exc:
            raise CliError(str(exc)) from None
        except SQLAlchemyError as exc:
            raise CliError(f"cannot open the database {safe_url(settings)}: {exc}") from None
        attach_http(service)
        attach_worker_and_sender(service)
        try:
            service.run_until_signalled()
        except HttpStartError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            node = settings.node
            raise CliError(f"cannot listen on {node.host}:{node.port}: {exc}") from None


@app.command()
def status(
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
    check: bool = typer.Option(
        False, "--check", help="Only the verdict and its reasons; exit 0 healthy, 1 degraded, "
        "2 down (for monitoring and container health checks)."),
) -> None:
    """Whether the node is healthy: serve running (heartbeat age), the model, destinations,
    outbound queue, FAILED studies in 24 h; studies per state, spool disk use, latest arrivals."""
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
        raise typer.Exit(health["exit_code"])
    if as_json:
        print_json(report)
        return
    _print_status(settings, report)


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
        f"failed   {report['failed_last_24h']} studies FAILED in the last 24 h\n"
        f"ignored  {report['ignored_instances']} instances of other SOP classes "
        "acknowledged, not kept",
        highlight=False,
        soft_wrap=True,
    )
    if report["destinations"]:
        print_table("Destinations", ["destination", "state", "pending", "dead", "last success"],
                    [[d["name"], d["state"], d["pending"], d["dead"],
                      _time(d["last_success_at"]) or "never"] for d in report["destinations"]])
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


@studies_app.command("list")
def studies_list(
    config: Path | None = ConfigOption,
    state: str | None = typer.Option(None, "--state", help="Only studies in this state."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = JsonOption,
) -> None:
    """Studies, most recent arrival first."""
    from storage import worklist
    with user_errors():
        wanted = _parse_state(state)
        database = open_worklist(settings_from(config), read_only=True)
        with database.read_only() as session:
            studies = worklist.list_studies(session, wanted, limit)
        database.dispose()
    if as_json:
        print_json([_jsonable(s) for s in studies])
        return
    print_table(
        "Studies" + (f" in {wanted}" if wanted else ""),
        ["Study Instance UID", "state", "instances", "last arrival", "attempts", "error"],
        [
            [
                s.study_instance_uid,
                s.state.value,
                s.instance_count,
                _time(s.last_arrival_at),
                s.attempts,
                s.last_error or s.skip_reason or "",
            ]
            for s in studies
        ],
    )


@studies_app.command("show")
def studies_show(
    uid: str = typer.Argument(..., help="Study Instance UID."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """One study: its state, lease and attempts, its instances, and its current result
    (findings, images scored or skipped, SR/summary UIDs, deliveries)."""
    from pydicom.uid import UID

    from dicom_node.studies import study_result
    from storage import worklist
    from storage.ignored import ignored_counts

    with user_errors():
        database = open_worklist(settings_from(config), read_only=True)
        with database.read_only() as session:
            detail = worklist.study_detail(session, uid.strip())
            ignored = ignored_counts(session, uid.strip())
        result = study_result(database, uid.strip())
        database.dispose()
        if detail is None:
            also = f" ({sum(ignored.values())} ignored instances of it)" if ignored else ""
            raise CliError(f"no study with Study Instance UID {uid!r} in the work list{also}")
    study, instances = detail
    if as_json:
        print_json(
            _jsonable(study)
            | {"instances": [_jsonable(i) for i in instances], "ignored_instances": ignored,
               "result": result}
        )
        return
    rows = [[k, v] for k, v in _jsonable(study).items()]
    rows += [[f"ignored {UID(k).name}", n] for k, n in ignored.items()]
    print_table("Study", ["field", "value"], rows)
    # series, transfer syntax UID and arrival times are in --json; at 80 columns the table keeps
    # what tells the instances apart, with the SOP Instance UID whole
    print_table(
        "Instances",
        ["SOP Instance UID", "modality", "view", "body part", "encoding", "bytes", "from AE"],
        [
            [i.sop_instance_uid, i.modality, i.view_position, i.body_part_examined,
             _syntax_name(i.transfer_syntax_uid), i.size_bytes, i.calling_ae_title]
            for i in instances
        ],
    )
    if result is not None:
        _print_result(result)


def _print_result(result: dict[str, Any]) -> None:
    """The result part of `studies show`, in tables that fit 80 columns."""
    profile = result["profile_version"]
    print_table("Result", ["field", "value"], [
        ["version", result["version"]
         if result["supersedes_version"] is None
         else f"{result['version']} (supersedes {result['supersedes_version']})"],
        ["made", _time(result["created_at"])],
        ["model", result["model"] + ("" if result["clinical_use"] else " (not for clinical use)")],
        ["profile", f"v{profile}" if profile is not None else "none (not analysed)"],
        ["aggregation", result["aggregation"]],
        ["SR", result["sr_sop_instance_uid"]],
        ["summary", result["summary_sop_instance_uid"]],
    ])
    print_table("Findings", ["finding", "score", "threshold", "decision"], [
        [f["label"], f"{f['score']:.4f}", f"{f['threshold']:.4f}", f["decision"]]
        for f in result["findings"]
    ])
    print_table("Images", ["SOP Instance UID", "scored", "why not"], [
        [i["sop_instance_uid"], "yes" if i["scored"] else "no", i["reason"] or ""]
        for i in result["images"]
    ])
    print_table("Deliveries", ["destination", "object", "state", "tries", "error"], [
        [d["destination"], d["kind"], d["state"], d["attempts"], d["last_error"] or ""]
        for d in result["deliveries"]
    ])


UidsArgument = typer.Argument(None, help="Study Instance UIDs (or --state STATE --all).")


@studies_app.command("retry")
def studies_retry(
    uids: list[str] | None = UidsArgument,
    config: Path | None = ConfigOption,
    state: str | None = typer.Option(None, "--state", help="With --all: studies in this state."),
    every: bool = typer.Option(False, "--all", help="Every study in --state (e.g. FAILED)."),
    as_json: bool = JsonOption,
) -> None:
    """Re-queue FAILED studies (attempts start again); a QUEUED one waiting out a retry
    backoff is made due now."""
    _requeue_command(uids, config, state, every, as_json, reprocess=False)


@studies_app.command("reprocess")
def studies_reprocess(
    uids: list[str] | None = UidsArgument,
    config: Path | None = ConfigOption,
    state: str | None = typer.Option(None, "--state", help="With --all: studies in this state."),
    every: bool = typer.Option(False, "--all", help="Every study in --state."),
    as_json: bool = JsonOption,
) -> None:
    """Make a new result for DONE, SKIPPED or FAILED studies (e.g. after a model or profile
    change); the new SR supersedes the previous one."""
    _requeue_command(uids, config, state, every, as_json, reprocess=True)


def _requeue_command(
    uids: list[str] | None,
    config: Path | None,
    state: str | None,
    every: bool,
    as_json: bool,
    reprocess: bool,
) -> None:
    from dicom_node.studies import requeue_studies, uids_in_state

    with user_errors():
        wanted = _parse_state(state)
        if bool(uids) == every or every != (wanted is not None):
            raise CliError("give Study Instance UIDs, or --state STATE --all (not both)")
        database = open_worklist(settings_from(config))
        targets = uids_in_state(database, wanted) if wanted else [u.strip() for u in uids or []]
        outcomes = requeue_studies(database, targets, datetime.now(UTC), reprocess=reprocess)
        database.dispose()
    if as_json:
        print_json([dataclasses.asdict(o) for o in outcomes])
    else:
        print_table(
            "Reprocess" if reprocess else "Retry",
            ["Study Instance UID", "was", "now"],
            [[o.study_instance_uid, o.previous_state or "", "QUEUED" if o.error is None
              else o.error] for o in outcomes],
        )
    if any(o.error for o in outcomes):
        raise typer.Exit(1)


def _syntax_name(uid: str) -> str:
    """"Explicit VR Little Endian" for 1.2.840.10008.1.2.1 (the UID itself when unknown)."""
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else uid


def _status_report(settings: Settings) -> dict[str, Any]:
    from dicom_node.health import health_report
    from storage import worklist
    from storage.ignored import ignored_counts
    from storage.spool import Spool

    spool = Spool(settings.spool_path)
    used, files = _spool_usage(spool)
    free = _free_bytes(spool.root)
    floor = settings.node.min_free_disk_mb * 1024 * 1024
    database = open_worklist(settings, read_only=True)
    with database.read_only() as session:
        counts = worklist.state_counts(session)
        recent = worklist.recent_instances(session, limit=5)
        ignored = sum(ignored_counts(session).values())
    health = health_report(settings, database, datetime.now(UTC), free < floor)
    database.dispose()
    return health | {
        "ae_title": settings.node.ae_title,
        "port": settings.node.port,
        "data_dir": str(settings.data_path),
        "database": safe_url(settings),
        "states": {state.value: count for state, count in counts.items()},
        "ignored_instances": ignored,  # other SOP classes acknowledged, not kept
        "spool": {
            "path": str(spool.root),
            "used_bytes": used,
            "files": files,
            "free_bytes": free,
            "min_free_bytes": floor,
            "below_floor": free < floor,
        },
        "last_arrivals": [_jsonable(i) for i in recent],
        "model": _model_report(settings),
    }


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


def _model_report(settings: Settings) -> dict[str, Any]:
    """Whether the configured checkpoints are there (without them studies wait QUEUED), and
    what each one's model card says about clinical use."""
    from ml.model_card import card_statement

    checkpoints = [
        {"path": str(path), "present": path.is_file(), "card": card_statement(path)}
        for path in (settings.resolve(p) for p in settings.model.checkpoints)
    ]
    return {
        "name": settings.model.name,
        "clinical_use": settings.model.clinical_use,
        "checkpoints": checkpoints,
        "ready": bool(checkpoints) and all(c["present"] for c in checkpoints),
    }


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system where `path` is or would be, creating nothing (status is
    read-only: it must not make the data directory of a node that never ran)."""
    import shutil

    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _spool_usage(spool: Spool) -> tuple[int, int]:
    files = [p for p in spool.root.rglob("*.dcm") if p.is_file()] if spool.root.is_dir() else []
    return sum(p.stat().st_size for p in files), len(files)


def _parse_state(state: str | None) -> StudyState | None:
    from storage.states import StudyState
    if state is None:
        return None
    try:
        return StudyState(state.upper())
    except ValueError:
        known = ", ".join(s.value for s in StudyState)
        raise CliError(f"unknown state {state!r} (known: {known})") from None



def _jsonable(record: Any) -> dict[str, Any]:
    from storage.states import StudyState
    return {
        k: (_time(v) if isinstance(v, datetime) else v.value if isinstance(v, StudyState) else v)
        for k, v in dataclasses.asdict(record).items()
    }


def _time(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"
