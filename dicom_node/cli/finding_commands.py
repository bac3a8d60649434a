"""`dicom-node findings list|try|add|enable|disable|history`: the findings catalogue as the node
uses it, and the prompt workbench (a new finding from a prompt pair, scored from the image
embeddings stored with recent results). The work is in dicom_node.workbench and
dicom_node.findings, shared with the console."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

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
from ml.defaults import DEFAULT_RESAMPLES

findings_app = typer.Typer(
    help="Findings catalogue and prompt workbench: try a prompt pair, add it as a finding.",
    no_args_is_help=True,
)
app.add_typer(findings_app, name="findings")

LabelArgument = typer.Argument(..., help="The finding's label (shown to people, in the SR).")
PositiveOption = typer.Option(..., "--positive", help="Prompt that speaks for the finding.")
NegativeOption = typer.Option(..., "--negative", help="Prompt that speaks against it.")
LastOption = typer.Option(200, "--last", min=1, help="How many recent studies to score.")
LabelsOption = typer.Option(
    None, "--labels", help="CSV with study_instance_uid,label (1/0) columns: AUROC on them."
)
ResamplesOption = typer.Option(DEFAULT_RESAMPLES, "--resamples", min=1, help="Bootstrap resamples.")
SeedOption = typer.Option(0, "--seed", min=0, help="Bootstrap seed.")
ThresholdOption = typer.Option(0.5, "--threshold", help="Default threshold of the finding.")
NoteOption = typer.Option(None, "--note", help="Why (required); kept with the revision.")
AuthorOption = typer.Option(None, "--author", help="Who makes the change (default: OS user).")


def _actor(author: str | None) -> tuple[Any, str]:
    """(audit actor, revision author): the OS user running the command; with --author the
    revision names that author and the audit row keeps both, as the thresholds commands do."""
    from dicom_node import audit

    actor = audit.cli_actor()
    who = author.strip() if author and author.strip() else actor.name
    if who != actor.name:
        actor = audit.Actor(f"{actor.name} (as {who})", "cli")
    return actor, who


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@findings_app.command("list")
def findings_list(config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every finding the node knows: from the findings file or added from the workbench,
    scored (enabled) or not, with its default threshold and code."""
    from dicom_node import findings

    with user_errors():
        settings = settings_from(config)
        catalogue = findings.node_catalogue_from_url(settings)
        base = {f.label for f in findings.file_catalogue(settings).findings}
    rows = [
        {"label": f.label, "enabled": f.enabled, "default_threshold": f.default_threshold,
         "code": {"value": f.code_value, "scheme": f.code_scheme, "meaning": f.code_meaning},
         "positive_prompt": f.positive_prompt, "negative_prompt": f.negative_prompt,
         "source": "file" if f.label in base else "added"}
        for f in catalogue.findings
    ]
    if as_json:
        print_json({"catalogue_version": catalogue.version, "findings": rows})
        return
    print_table(
        f"Findings catalogue {catalogue.version} ({catalogue.source})",
        ["finding", "scored", "default\nthreshold", "code", "from"],
        [[r["label"], "yes" if r["enabled"] else "no", _fmt(r["default_threshold"]),
          f"{r['code']['value']} ({r['code']['scheme']})", r["source"]] for r in rows],
    )


@findings_app.command("try")
def findings_try(
    label: str = LabelArgument,
    positive: str = PositiveOption,
    negative: str = NegativeOption,
    last: int = LastOption,
    labels: Path = LabelsOption,
    threshold: float = ThresholdOption,
    resamples: int = ResamplesOption,
    seed: int = SeedOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Score a prompt pair on recent studies from their stored image embeddings (one text
    encoding; no image is read again), and with --labels its AUROC with a bootstrap
    interval. Changes nothing."""
    trial = _trial(config, label, positive, negative, last, labels, threshold, resamples, seed)
    if as_json:
        print_json(trial.as_dict())
        return
    _print_trial(trial)


def _trial(
    config: Path | None, label: str, positive: str, negative: str, last: int,
    labels: Path | None, threshold: float, resamples: int, seed: int,
) -> Any:
    from dicom_node import workbench

    with user_errors():
        settings = settings_from(config)
        pair = workbench.PromptPair(label, positive, negative)
        database = open_worklist(settings)
        try:
            return workbench.try_prompt(database, settings, pair, last=last, labels_csv=labels,
                                        threshold=threshold, resamples=resamples, seed=seed)
        finally:
            database.dispose()


def _print_trial(trial: Any) -> None:
    summary = trial.summary()
    left = ", ".join(f"{n} {reason}" for reason, n in trial.left_out.items())
    console.print(
        f"{trial.pair.label}: '{trial.pair.positive}' vs '{trial.pair.negative}' on "
        f"{len(trial.scores)} of the last {trial.studies_requested} studies"
        + (f" (left out: {left})" if left else ""), highlight=False, markup=False)
    if trial.scores:
        console.print(
            f"scores: mean {_fmt(summary['mean'])}, median {_fmt(summary['median'])}, "
            f"range {_fmt(summary['min'])}-{_fmt(summary['max'])}; {trial.at_or_above} at or "
            f"above {trial.threshold:.3f}", highlight=False)
    result = trial.labelled
    if result is not None:
        counts = f"{result.n_positive} positive / {result.n_negative} negative studies"
        missing = f", {result.not_found} labelled studies not found" if result.not_found else ""
        if result.reason:
            console.print(f"AUROC on {result.source}: not evaluable: {result.reason} "
                          f"({counts}{missing})", highlight=False, markup=False)
        else:
            console.print(
                f"AUROC on {result.source}: {result.estimate:.3f} "
                f"(95% {result.lower:.3f}-{result.upper:.3f}, {result.method}, "
                f"{result.resamples} resamples; {counts}{missing})",
                highlight=False, markup=False)
    caveat = "" if trial.clinical_use else f"; {trial.model_name}: NOT FOR CLINICAL USE"
    console.print(f"zero-shot scores, not probabilities{caveat}", highlight=False,
                  markup=False)


@findings_app.command("add")
def findings_add(
    label: str = LabelArgument,
    positive: str = PositiveOption,
    negative: str = NegativeOption,
    code: str = typer.Option(None, "--code", help="Code value of a standard concept."),
    scheme: str = typer.Option(None, "--scheme", help="Its coding scheme, e.g. SCT."),
    meaning: str = typer.Option(None, "--meaning", help="Code meaning (default: the label)."),
    private_code: str = typer.Option(
        None, "--private-code", help="A private code value in scheme 99DCMNODE instead."
    ),
    threshold: float = ThresholdOption,
    labels: Path = LabelsOption,
    last: int = LastOption,
    note: str = NoteOption,
    author: str = AuthorOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Add a finding to the catalogue as a new revision, disabled: it is scored only after
    `findings enable` and the node's next start. The prompt pair is tried first (on recent
    studies and, with --labels, for AUROC) and the result kept with the revision."""
    from dicom_node import findings

    with user_errors():
        value, code_scheme = _code(code, scheme, private_code)
        if not note or not note.strip():
            raise CliError("--note is required: say why this finding is added")
        trial = _trial(config, label, positive, negative, last, labels, threshold,
                       DEFAULT_RESAMPLES, 0)
        settings = settings_from(config)
        new = findings.NewFinding(label, positive, negative, value, code_scheme, meaning,
                                  threshold)
        actor, who = _actor(author)
        database = open_worklist(settings)
        try:
            revision, catalogue = findings.add_finding(
                settings, database, new, actor=actor, author=who, note=note,
                now=datetime.now(UTC), provenance=_provenance(trial),
            )
        finally:
            database.dispose()
    if as_json:
        print_json({**revision.as_dict(), "catalogue_version": catalogue.version})
        return
    console.print(
        f"added {revision.label} as catalogue revision {revision.revision} (catalogue "
        f"{catalogue.version}), not scored yet; enable with: dicom-node findings enable "
        f"'{revision.label}' --note ...", highlight=False, markup=False)


def _code(code: str | None, scheme: str | None, private: str | None) -> tuple[str, str]:
    from dicom_node.findings import PRIVATE_SCHEME

    if private and (code or scheme):
        raise CliError("give either --code with --scheme, or --private-code, not both")
    if private:
        return private, PRIVATE_SCHEME
    if not code or not scheme:
        raise CliError("a finding needs a code: --code VALUE --scheme SCHEME, or --private-code")
    return code, scheme


def _provenance(trial: Any) -> dict[str, Any]:
    summary = trial.summary()
    return {
        "model": trial.model_name,
        "checkpoints": list(trial.checkpoint_sha256s),
        "tried_on_studies": len(trial.scores),
        "mean_score": summary["mean"],
        "labelled": trial.labelled.as_dict() if trial.labelled else None,
    }


@findings_app.command("enable")
def findings_enable(
    label: str = LabelArgument, note: str = NoteOption, author: str = AuthorOption,
    config: Path = ConfigOption, as_json: bool = JsonOption,
) -> None:
    """Score an added finding from the node's next start on (a new catalogue revision)."""
    _set_enabled(label, True, note, author, config, as_json)


@findings_app.command("disable")
def findings_disable(
    label: str = LabelArgument, note: str = NoteOption, author: str = AuthorOption,
    config: Path = ConfigOption, as_json: bool = JsonOption,
) -> None:
    """Stop scoring an added finding from the node's next start on (a new revision)."""
    _set_enabled(label, False, note, author, config, as_json)


def _set_enabled(
    label: str, enabled: bool, note: str | None, author: str | None, config: Path | None,
    as_json: bool,
) -> None:
    from dicom_node import findings

    with user_errors():
        settings = settings_from(config)
        actor, who = _actor(author)
        database = open_worklist(settings)
        try:
            revision = findings.set_enabled(settings, database, label, enabled, actor=actor,
                                            author=who, note=note or "",
                                            now=datetime.now(UTC))
        finally:
            database.dispose()
    if as_json:
        print_json(revision.as_dict())
        return
    console.print(f"revision {revision.revision}: {revision.label} {revision.action}d; "
                  "takes effect when the node next starts", highlight=False, markup=False)


@findings_app.command("history")
def findings_history(config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every catalogue revision: added, enabled or disabled findings, who, when, why."""
    from dicom_node import findings

    with user_errors():
        settings = settings_from(config)
        database = open_worklist(settings, read_only=True)
        try:
            revisions = findings.history(database)
        finally:
            database.dispose()
    if as_json:
        print_json({"revisions": [r.as_dict() for r in revisions]})
        return
    if not revisions:
        console.print("no catalogue revision yet: the catalogue is the findings file as "
                      "configured", highlight=False)
        return
    print_table(
        "Catalogue revisions (the findings file is the base)",
        ["revision", "when (UTC)", "who", "change", "note"],
        [[r.revision, f"{r.created_at:%Y-%m-%d %H:%M}", r.author, f"{r.action} {r.label}",
          r.note] for r in revisions],
    )
