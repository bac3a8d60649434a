"""`dicom-node serve`, `status` and `studies list|show`: running the node and looking inside."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dicom_node.cli import worklist_views
from dicom_node.cli.common import (
    CliError,
    ConfigOption,
    JsonOption,
    open_worklist,
    print_json,
    print_table,
    settings_from,
    user_errors,
)
from dicom_node.cli.typer_app import app
from dicom_node.cli.worklist_views import iso_time, jsonable, parse_state, safe_url

if TYPE_CHECKING:
    from dicom_node.settings import Settings

studies_app = typer.Typer(help="Studies in the work list.", no_args_is_help=True)
app.add_typer(studies_app, name="studies")


@app.command()
def serve(config: Path | None = ConfigOption) -> None:
    """Run the node: the DICOM listener, study assembly and everything added to the service."""
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_node.logs import configure_logging
    from dicom_node.startup import StartupError, check_clinical_use, check_data_dir, check_port
    from storage.reader import error_text

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
        _check_trained_findings(settings)
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
            raise CliError(f"cannot open the database {safe_url(settings)}: {error_text(exc)}"
                           ) from None
        attach_http(service)
        attach_worker_and_sender(service)
        try:
            service.run_until_signalled()
        except HttpStartError as exc:
            raise CliError(str(exc)) from None
        except OSError as exc:
            node = settings.node
            raise CliError(f"cannot listen on {node.host}:{node.port}: {exc}") from None


def _check_trained_findings(settings: Settings) -> None:
    from dicom_node.trained_findings import UntrainedFindingError, check_settings

    try:
        check_settings(settings)
    except UntrainedFindingError as exc:
        raise CliError(str(exc)) from None


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
    worklist_views.status(config, as_json, check)


@studies_app.command("list")
def studies_list(
    config: Path | None = ConfigOption,
    state: str | None = typer.Option(None, "--state", help="Only studies in this state."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many, newest first."),
    as_json: bool = JsonOption,
) -> None:
    """Studies, most recent arrival first."""
    worklist_views.studies_list(config, state, limit, as_json)


@studies_app.command("show")
def studies_show(
    uid: str = typer.Argument(..., help="Study Instance UID."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """One study: its state, lease and attempts, its instances, and its current result
    (findings, images scored or skipped, SR/summary/text report UIDs, deliveries)."""
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
            jsonable(study)
            | {"instances": [jsonable(i) for i in instances], "ignored_instances": ignored,
               "result": result}
        )
        return
    rows = [[k, v] for k, v in jsonable(study).items()]
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
        ["made", iso_time(result["created_at"])],
        ["model", result["model"] + ("" if result["clinical_use"] else " (not for clinical use)")],
        ["profile", f"v{profile}" if profile is not None else "none (not analysed)"],
        ["aggregation", result["aggregation"]],
        ["SR", result["sr_sop_instance_uid"]],
        ["summary", result["summary_sop_instance_uid"]],
        ["text report", result["text_sop_instance_uid"] or "none (an older result)"],
    ])
    print_table("Findings", ["finding", "score", "threshold", "decision"], [
        [f["label"] + (" (derived)" if f.get("derivation") else ""), f"{f['score']:.4f}",
         f"{f['threshold']:.4f}", f["decision"]]
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
    from dicom_node.audit import cli_actor
    from dicom_node.studies import requeue_studies, uids_in_state

    with user_errors():
        wanted = parse_state(state)
        if bool(uids) == every or every != (wanted is not None):
            raise CliError("give Study Instance UIDs, or --state STATE --all (not both)")
        database = open_worklist(settings_from(config))
        targets = uids_in_state(database, wanted) if wanted else [u.strip() for u in uids or []]
        outcomes = requeue_studies(database, targets, datetime.now(UTC), reprocess=reprocess,
                                   actor=cli_actor())
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


