"""`dicom-node thresholds ...` (versioned threshold profiles, calibration) and
`dicom-node evaluate` (AUROC with bootstrap intervals, ROC figure, CSV/JSON).

Profiles live in the node's database (`storage.profiles`); scoring and statistics are `ml/`.
Calibration and evaluation read a labels CSV in CheXpert layout (`ml.labels`), score every
image once through the score cache under the data directory, and never touch the work list.
"""

from __future__ import annotations

import dataclasses
import getpass
import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dicom_node.cli.common import (
    CliError,
    ConfigOption,
    JsonOption,
    console,
    open_worklist,
    print_json,
    print_table,
    progress_bar,
    settings_from,
    user_errors,
)
from dicom_node.cli.typer_app import app
from dicom_node.settings import Settings

if TYPE_CHECKING:
    import numpy as np
    from sqlalchemy.orm import Session

    from ml.evaluation import EvaluationReport, FindingResult
    from ml.labels import LabelledSet, LabelPolicy
    from ml.metrics import Interval
    from storage import profiles
from ml.catalogue import MAX_PROBABILITY, MIN_PROBABILITY, Catalogue
from ml.defaults import BLANK_POLICIES, DEFAULT_RESAMPLES, UNCERTAIN_POLICIES

thresholds_app = typer.Typer(
    help="Threshold profiles: immutable versions, one active; set, activate, diff, calibrate.",
    no_args_is_help=True,
)
app.add_typer(thresholds_app, name="thresholds")

AuthorOption = typer.Option(None, "--author", help="Who makes the change (default: OS user).")
NoteOption = typer.Option(None, "--note", help="Why; kept with the version for ever.")
CheckpointOption = typer.Option(
    None,
    "--checkpoint",
    help="Checkpoint file (repeat for an ensemble); default: [model] checkpoints.",
)
UncertainOption = typer.Option(
    "exclude", "--uncertain", help=f"-1 labels: {' | '.join(UNCERTAIN_POLICIES)}."
)
BlankOption = typer.Option(
    "negative", "--blank", help=f"Blank labels: {' | '.join(BLANK_POLICIES)}."
)
ImagesRootOption = typer.Option(
    None,
    "--images-root",
    help="Folder the CSV's relative paths start from (default: beside the CSV).",
)
ResamplesOption = typer.Option(DEFAULT_RESAMPLES, "--resamples", min=1, help="Bootstrap resamples.")
LabelsArgument = typer.Argument(..., help="Labels CSV in CheXpert layout (path + findings).")
OutOption = typer.Option(
    Path("evaluation"), "--out", help="Folder for roc.png, metrics.csv, metrics.json."
)
SeedOption = typer.Option(0, "--seed", min=0, help="Bootstrap seed (0 reproduces CheXzero's).")
ForceOption = typer.Option(
    False, "--force", help="Activate even if a model card says an enabled finding was not "
    "trained (logged; its scores mean nothing).")

REACHABLE_RANGE_REASON = (
    "zero-shot scores are sigmoid(cos(image, positive) - cos(image, negative)) of two "
    f"cosines in [-1, 1], so they always lie in [{MIN_PROBABILITY:.3f}, {MAX_PROBABILITY:.3f}]"
)


@dataclass(frozen=True)
class Context:
    settings: Settings
    catalogue: Catalogue


def _context(config: Path | None) -> Context:
    """Settings and the node's catalogue (the findings file plus findings added from the
    workbench, which live in the database)."""
    from dicom_node.findings import node_catalogue_from_url
    settings = settings_from(config)
    return Context(settings, node_catalogue_from_url(settings))


@contextmanager
def _database(ctx: Context) -> Iterator[Any]:
    """The node's database (migrated) for the service layer; disposed afterwards."""
    database = open_worklist(ctx.settings)
    try:
        yield database
    finally:
        database.dispose()


def _reflow(func: Callable[..., None]) -> Callable[..., None]:
    """Join the docstring's wrapped lines so that --help wraps paragraphs to the terminal."""
    paragraphs = inspect.cleandoc(func.__doc__ or "").split("\n\n")
    func.__doc__ = "\n\n".join(" ".join(p.split()) for p in paragraphs)
    return func


@contextmanager
def _session(ctx: Context) -> Iterator[Session]:
    """A session on the node's database with version 1 present (catalogue defaults); commits."""
    from storage import profiles
    from storage.db import open_database
    database = open_database(ctx.settings.database_url, options=ctx.settings.engine_options)
    try:
        with database.sessions() as session:
            defaults = {f.label: f.default_threshold for f in ctx.catalogue.findings}
            profiles.ensure_initial_profile(session, defaults)
            yield session
            session.commit()
    finally:
        database.dispose()


def _check_trained(ctx: Context, force: bool) -> None:
    """Refuse (CliError, one line) to put thresholds to use for findings the configured
    checkpoints' model cards say were not trained, unless `force` (then a warning line)."""
    from dicom_node.trained_findings import UntrainedFindingError, check_trained_findings
    checkpoints = [ctx.settings.resolve(p) for p in ctx.settings.model.checkpoints]
    try:
        forced = check_trained_findings(checkpoints, ctx.catalogue, force=force,
                                        how_to_force="--force")
    except UntrainedFindingError as exc:
        raise CliError(str(exc)) from None
    for item in forced:
        console.print(f"forced: {item.sentence(ctx.catalogue)}", highlight=False, markup=False,
                      soft_wrap=True)


def _author(author: str | None) -> str:
    if author and author.strip():
        return author.strip()
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


# --- profiles ---------------------------------------------------------------------------------


@thresholds_app.command("show")
@_reflow
def show(
    version: int = typer.Argument(None, help="Version to show (default: the active one)."),
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """The thresholds of the active (or a given) profile version."""
    from storage import profiles
    with user_errors():
        ctx = _context(config)
        with _session(ctx) as session:
            active = profiles.active_version(session)
            shown = profiles.get_profile(session, active if version is None else version)
        if as_json:
            print_json({"active_version": active, **shown.as_dict()})
            return
        rows = []
        for label in sorted({*shown.thresholds, *(f.label for f in ctx.catalogue.findings)}):
            finding = _catalogue_entry(ctx.catalogue, label)
            rows.append(
                [
                    label,
                    _fmt(shown.thresholds.get(label)),
                    _fmt(finding.default_threshold) if finding else "-",
                    "yes" if finding and finding.enabled else "no",
                ]
            )
        state = "active" if shown.version == active else f"not active; active is v{active}"
        print_table(
            f"Threshold profile v{shown.version} ({state}) by {shown.author}, "
            f"{shown.created_at:%Y-%m-%d %H:%M} UTC, {shown.method}",
            ["finding", "threshold", "catalogue default", "scored"],
            rows,
        )


@thresholds_app.command("set")
@_reflow
def set_threshold(
    finding: str = typer.Argument(..., help="Finding label from the catalogue."),
    value: float = typer.Argument(..., help="New threshold: present when the score >= it."),
    note: str = NoteOption,
    author: str = AuthorOption,
    activate: bool = typer.Option(True, "--activate/--no-activate", help="Make it active now."),
    force: bool = ForceOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """New version = the active one with FINDING at VALUE; active at once unless --no-activate."""
    from storage import profiles
    with user_errors():
        ctx = _context(config)
        label = _finding_label(ctx.catalogue, finding)
        if activate:
            _check_trained(ctx, force)
        if not MIN_PROBABILITY < value < MAX_PROBABILITY:
            raise CliError(
                f"threshold {value} for {label} can never be crossed: {REACHABLE_RANGE_REASON}"
            )
        who = _author(author)
        with _session(ctx) as session:
            before = profiles.get_profile(session, profiles.active_version(session))
            if before.thresholds.get(label) == value:
                raise CliError(
                    f"{label} is already {value} in the active version v{before.version}"
                )
            created = profiles.derive_profile(
                session, {label: value}, author=who, method="set", note=note
            )
            _audit_version(session, who, "thresholds.create", created.version,
                           {label: before.thresholds.get(label)}, {label: value}, note)
            if activate and profiles.activate(session, created.version, by=who, note=note):
                _audit_activation(session, who, before.version, created.version, note)
        changes = profiles.diff(before, created)
        _report_new_version(created, before.version, activate, changes, as_json)


def _report_new_version(
    created: profiles.ProfileVersion,
    before: int | None,
    activated: bool,
    changes: Sequence[profiles.ThresholdChange],
    as_json: bool,
) -> None:
    if as_json:
        print_json(
            {
                "version": created.version,
                "based_on_version": created.based_on_version,
                "activated": activated,
                "previously_active": before,
                "changes": [c.as_dict() for c in changes],
            }
        )
        return
    described = ", ".join(f"{c.finding} {_fmt(c.before)} -> {_fmt(c.after)}" for c in changes)
    console.print(
        f"created v{created.version} from v{created.based_on_version}: "
        f"{described or 'no threshold changed'}",
        highlight=False,
    )
    if activated:
        console.print(
            f"v{created.version} is active (was v{before}); "
            f"undo with: dicom-node thresholds activate {before}",
            highlight=False,
        )
    else:
        console.print(
            f"v{before} stays active; use it with: "
            f"dicom-node thresholds activate {created.version}",
            highlight=False,
        )


@thresholds_app.command("activate")
@_reflow
def activate_version(
    version: int = typer.Argument(..., help="Profile version to make active."),
    note: str = NoteOption,
    author: str = AuthorOption,
    force: bool = ForceOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Make VERSION the active profile; a running node uses it from its next study on.

    The activation is recorded in the history (who, when, note). Undo is activating the
    version that was active before.
    """
    from storage import profiles
    with user_errors():
        ctx = _context(config)
        _check_trained(ctx, force)
        with _session(ctx) as session:
            before = profiles.active_version(session)
            who = _author(author)
            changed = profiles.activate(session, version, by=who, note=note)
            if changed:
                _audit_activation(session, who, before, version, note)
        if as_json:
            print_json({"active_version": version, "previously_active": before, "changed": changed})
        elif changed:
            console.print(f"v{version} is active (was v{before})", highlight=False)
        else:
            console.print(f"v{version} was already active; nothing changed", highlight=False)


def _cli_actor(who: str) -> Any:
    from dicom_node import audit

    actor = audit.cli_actor()
    if who != actor.name:  # --author given: keep both names
        actor = audit.Actor(f"{actor.name} (as {who})", "cli")
    return actor


def _audit_activation(session: Session, who: str, before: int | None, version: int,
                      note: str | None) -> None:
    from datetime import UTC, datetime

    from dicom_node import audit

    audit.record(session, _cli_actor(who), "thresholds.activate", f"v{version}",
                 before={"active_version": before},
                 after={"active_version": version, "note": note}, now=datetime.now(UTC))


def _audit_version(session: Session, who: str, action: str, version: int,
                   before: Mapping[str, Any], after: Mapping[str, Any], note: str | None) -> None:
    """A new profile version: the thresholds it changed, before and after."""
    from datetime import UTC, datetime

    from dicom_node import audit

    audit.record(session, _cli_actor(who), action, f"v{version}",
                 before={"thresholds": dict(before)},
                 after={"thresholds": dict(after), "note": note}, now=datetime.now(UTC))


@thresholds_app.command("diff")
@_reflow
def diff_versions(
    a: int = typer.Argument(..., help="Older version."),
    b: int = typer.Argument(..., help="Newer version."),
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Findings whose threshold differs between versions A and B, and who made each."""
    from dicom_node import thresholds
    with user_errors():
        ctx = _context(config)
        with _database(ctx) as database:
            compared = thresholds.diff(database, ctx.catalogue, a, b)
        older, newer, changes = compared.older, compared.newer, compared.changes
        if as_json:
            print_json(compared.as_dict())
            return
        print_table(
            f"v{a} ({older.author}, {older.method}) -> v{b} ({newer.author}, {newer.method})",
            ["finding", f"v{a}", f"v{b}", "change"],
            [[c.finding, _fmt(c.before), _fmt(c.after), _delta(c)] for c in changes],
        )
        if not changes:
            console.print("no threshold differs", highlight=False)


def _delta(change: profiles.ThresholdChange) -> str:
    if change.before is None or change.after is None:
        return "added" if change.before is None else "removed"
    return f"{change.after - change.before:+.3f}"


@thresholds_app.command("history")
@_reflow
def show_history(config: Path = ConfigOption, as_json: bool = JsonOption) -> None:
    """Every version created and every activation: when, who, how, what changed, why.

    --json also lists every version with its thresholds and provenance."""
    from dicom_node import thresholds
    with user_errors():
        ctx = _context(config)
        with _database(ctx) as database:
            found = thresholds.history(database, ctx.catalogue)
        events, active = found.events, found.active_version
        if as_json:
            print_json(found.as_dict())
            return
        rows = [
            [
                f"{e.at:%Y-%m-%d %H:%M:%S}",
                f"{e.kind} v{e.version}" + (f"\n{e.method}" if e.method else ""),
                e.who,
                "\n".join(f"{c.finding} {_fmt(c.before)} -> {_fmt(c.after)}" for c in e.changes),
                e.note or "",
            ]
            for e in events
        ]
        print_table(
            f"Threshold history (active: v{active})",
            ["when (UTC)", "event", "who", "changes", "note"],
            rows,
        )


@thresholds_app.command("preview")
@_reflow
def preview(
    finding: str = typer.Argument(..., help="Finding label from the catalogue."),
    value: float = typer.Argument(..., help="Proposed threshold."),
    last: int = typer.Option(200, "--last", min=1, help="How many recent studies to replay."),
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """What FINDING at VALUE would change, before anything is saved.

    Replays the stored study-level scores of the last N analysed studies at the active
    version's threshold and at VALUE (nothing is scored again), and, where `thresholds
    calibrate` stored a labelled set, shows sensitivity and specificity at both thresholds
    with Wilson score 95% intervals. Saves nothing.
    """
    from dicom_node import thresholds
    with user_errors():
        ctx = _context(config)
        with _database(ctx) as database:
            shown = thresholds.preview(database, ctx.catalogue, finding, value, last=last)
    if as_json:
        print_json(shown.as_dict())
        return
    console.print(
        f"{shown.finding}: v{shown.active_version} threshold {_fmt(shown.current_threshold)} "
        f"-> proposed {_fmt(shown.proposed_threshold)}", highlight=False)
    console.print(shown.sentence(), highlight=False)
    console.print(f"present: {shown.present_now} now, {shown.present_proposed} at the proposed "
                  f"threshold", highlight=False)
    if shown.calibration is None:
        console.print(shown.calibration_missing, highlight=False, markup=False)
        return
    cal = shown.calibration
    print_table(
        f"On the {cal.source} ({cal.interval_method} intervals)"
        + ("" if cal.same_model is not False
           else f"; scored by other checkpoints ({cal.model_name}) than recent studies"),
        ["threshold", "sensitivity", "specificity"],
        [[f"{label} {_fmt(point.threshold)}", _proportion(point.sensitivity),
          _proportion(point.specificity)]
         for label, point in (("current", cal.current), ("proposed", cal.proposed))],
    )


def _proportion(p: Any) -> str:
    if p.estimate is None:
        return "- (no labels)"
    return f"{p.estimate:.3f} ({p.successes}/{p.total})\n{p.lower:.2f}-{p.upper:.2f}"


FindingFilterOption = typer.Option(None, "--finding", help="Only this finding (repeat).")
SvgDirOption = typer.Option(None, "--svg-dir", help="Write one SVG histogram per finding.")


@thresholds_app.command("drift")
@_reflow
def drift_command(
    last: int = typer.Option(200, "--last", min=1, help="How many recent studies."),
    finding: list[str] = FindingFilterOption,
    svg_dir: Path = SvgDirOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Score distributions of recent studies against the stored calibration set, per finding.

    Mean score of each and the Kolmogorov-Smirnov statistic D (0: same distribution, 1: no
    overlap); --svg-dir writes the histograms the console shows.
    """
    from dicom_node import drift, thresholds
    with user_errors():
        ctx = _context(config)
        names = [thresholds.finding_label(ctx.catalogue, f) for f in finding or []]
        with _database(ctx) as database:
            report = drift.drift(database, ctx.catalogue, last=last, findings=names or None)
        files = _write_drift_svgs(ctx, report, svg_dir) if svg_dir else []
    if as_json:
        print_json({**report.as_dict(), "files": files})
        return
    print_table(
        f"Score drift: last {report.studies} studies vs "
        f"{report.calibration or 'no calibration set stored'}",
        ["finding", "threshold", "recent mean\n(studies)", "calibration\nmean (images)",
         "KS D"],
        [[f.finding, _fmt(f.threshold), f"{_fmt(f.recent_mean)}\n({f.n_recent})",
          f"{_fmt(f.calibration_mean)}\n({f.n_calibration})", _fmt(f.ks_statistic, 2)]
         for f in report.findings],
    )
    if files:
        console.print(f"wrote {len(files)} SVG file(s) to {svg_dir}", highlight=False)


def _write_drift_svgs(ctx: Context, report: Any, folder: Path) -> list[str]:
    from dicom_node.charts import histogram_svg
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for f in report.findings:
        svg = histogram_svg(
            f"{f.finding}: recent studies vs calibration set", f.edges,
            [("recent studies", f.recent), ("calibration positives", f.calibration_positive),
             ("calibration negatives", f.calibration_negative)],
            threshold=f.threshold, clinical_use=ctx.settings.model.clinical_use,
            footnote=ctx.settings.model.name,
        )
        path = folder / f"{''.join(c if c.isalnum() else '-' for c in f.finding)}.svg"
        path.write_text(svg)
        files.append(str(path))
    return files


def _catalogue_entry(catalogue: Catalogue, label: str) -> Any:
    try:
        return catalogue.by_label(label)
    except KeyError:
        return None


def _finding_label(catalogue: Catalogue, name: str) -> str:
    for finding in catalogue.findings:
        if finding.label.casefold() == name.strip().casefold():
            return finding.label
    known = ", ".join(f.label for f in catalogue.findings)
    raise CliError(f"unknown finding {name!r} (the catalogue has: {known})")


# --- scoring a labelled set --------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredSet:
    labelled: LabelledSet
    findings: tuple[str, ...]  # enabled findings that have a column in the labels file
    labels: np.ndarray  # (images, findings): 1, 0 or NaN (excluded by the policy)
    scores: np.ndarray  # (images, findings): NaN where the engine declined the image
    skipped: Mapping[str, int]  # the engine's reason -> images
    provenance: Mapping[str, Any]


def _score_labelled(
    ctx: Context,
    labels_csv: Path,
    checkpoints: Sequence[Path] | None,
    policy: LabelPolicy,
    images_root: Path | None,
) -> ScoredSet:
    import numpy as np  # numpy only for the commands that compute: `status` starts faster

    from ml.labels import read_labels
    from ml.score_cache import (
        CACHE_FILE_NAME,
        ScoreCache,
        file_sha256,
        model_key,
        score_paths_cached,
    )
    enabled = [f.label for f in ctx.catalogue.enabled()]
    labelled = read_labels(labels_csv, enabled, policy, images_root)
    findings = tuple(f for f in enabled if f not in labelled.missing_columns)
    if not findings:
        raise CliError(f"{labels_csv} has no column for any enabled finding ({', '.join(enabled)})")
    paths = _checkpoint_paths(ctx.settings, checkpoints)
    shas = [file_sha256(p) for p in paths]
    conversion = ctx.settings.model.dicom_conversion
    key = model_key(shas, ctx.catalogue.version, conversion, ctx.settings.model.reduced_resolution)
    cache = ScoreCache(ctx.settings.data_path / CACHE_FILE_NAME)
    with progress_bar("scoring images", len(labelled.paths)) as advance:
        results = score_paths_cached(
            labelled.paths,
            cache,
            key,
            lambda: _engine_scorer(ctx, paths, conversion),
            batch_size=ctx.settings.model.batch_size,
            progress=advance,
        )
    scores = np.array(
        [[(r.probabilities or {}).get(f, np.nan) for f in findings] for r in results],
        dtype=np.float64,
    ).reshape(len(results), len(findings))
    skipped = Counter(r.skipped_reason or "not scored" for r in results if r.probabilities is None)
    columns = [enabled.index(f) for f in findings]
    provenance = {
        "labels_csv": str(labels_csv),
        "labels_sha256": file_sha256(labels_csv),
        "images": len(labelled.paths),
        "images_from_cache": sum(r.from_cache for r in results),
        "label_policy": policy.describe(),
        "model": ctx.settings.model.name,
        "checkpoints": [{"file": p.name, "sha256": s} for p, s in zip(paths, shas)],
        "catalogue_version": ctx.catalogue.version,
        "dicom_conversion": conversion,
    }
    return ScoredSet(
        labelled, findings, labelled.labels[:, columns], scores, dict(skipped), provenance
    )


def _checkpoint_paths(settings: Settings, given: Sequence[Path] | None) -> list[Path]:
    paths = [Path(p).expanduser().resolve() for p in given or []]
    if not paths:
        paths = [settings.resolve(p) for p in settings.model.checkpoints]
    if not paths:
        raise CliError("no checkpoint: pass --checkpoint or set [model] checkpoints in the config")
    for path in paths:
        if not path.is_file():
            raise CliError(f"checkpoint not found: {path}")
    return paths


def _engine_scorer(ctx: Context, checkpoints: Sequence[Path], conversion: str) -> Callable:
    from ml.engine import ZeroShotEngine  # loading torch and the model only when needed

    model = ctx.settings.model
    engine = ZeroShotEngine(
        list(checkpoints),
        ctx.catalogue,
        device=model.device,
        cpu_threads=model.cpu_threads,
        batch_size=model.batch_size,
        prepare_reduced=model.reduced_resolution,
    )
    return lambda paths: engine.score_paths(list(paths), conversion)


def _policy(uncertain: str, blank: str) -> LabelPolicy:
    from ml.labels import LabelPolicy
    return LabelPolicy(uncertain=uncertain.strip().lower(), blank=blank.strip().lower())


def _interval_text(value: Interval | None) -> str:
    """Estimate over its 95% interval, two lines so that wide tables fit a terminal."""
    if value is None:
        return "-"
    return f"{_fmt(value.estimate)}\n{_fmt(value.lower, 2)}-{_fmt(value.upper, 2)}"


def _notes(scored: ScoredSet) -> list[str]:
    notes = [f"{n} image(s) not scored: {reason}" for reason, n in scored.skipped.items()]
    if scored.labelled.missing_columns:
        notes.append(f"no labels column for: {', '.join(scored.labelled.missing_columns)}")
    if scored.labelled.unknown_columns:
        notes.append(f"columns ignored: {', '.join(scored.labelled.unknown_columns)}")
    return notes


# --- calibrate -----------------------------------------------------------------------------------


@thresholds_app.command("calibrate")
@_reflow
def calibrate(
    labels_csv: Path = LabelsArgument,
    method: str = typer.Option(
        ..., "--method", help="mcc | youden | sensitivity:T | specificity:T | fixed."
    ),
    activate: bool = typer.Option(False, "--activate", help="Make the new version active."),
    uncertain: str = UncertainOption,
    blank: str = BlankOption,
    images_root: Path = ImagesRootOption,
    checkpoint: list[Path] = CheckpointOption,
    resamples: int = ResamplesOption,
    seed: int = SeedOption,
    note: str = NoteOption,
    author: str = AuthorOption,
    force: bool = ForceOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Choose thresholds on labelled images and save them as a new profile version.

    Scores every image once (cached), picks a threshold per finding by --method, prints
    sensitivity, specificity, PPV, NPV, F1 and MCC at it with bootstrap 95% intervals, and saves
    a new version based on the active one, made active only with --activate. Findings without
    both positive and negative labels keep their threshold. --method fixed measures the active
    thresholds and saves nothing.
    """
    from ml.calibration import parse_method
    from ml.evaluation import evaluate_scores
    from storage import profiles
    with user_errors():
        chosen_method = parse_method(method)
        ctx = _context(config)
        if activate:
            _check_trained(ctx, force)
        scored = _score_labelled(
            ctx, labels_csv, checkpoint, _policy(uncertain, blank), images_root
        )
        with _session(ctx) as session:
            base = profiles.active_profile(session)
        defaults = {f.label: f.default_threshold for f in ctx.catalogue.findings}
        thresholds, kept = _choose(scored, chosen_method, base, defaults)
        with progress_bar("bootstrap", 1) as advance:
            report = evaluate_scores(
                scored.findings,
                scored.labels,
                scored.scores,
                thresholds,
                resamples=resamples,
                seed=seed,
            )
            report = _with_out_of_bag_intervals(
                report, scored, chosen_method, kept, resamples, seed
            )
            advance(1)
        created, activated, changes = None, False, []
        if chosen_method.kind != "fixed":
            created, activated, changes = _save_calibrated(
                ctx,
                scored,
                thresholds,
                kept,
                chosen_method.describe(),
                base.version,
                resamples,
                seed,
                activate,
                _author(author),
                note,
            )
        _record_calibration_set(ctx, scored, created.version if created else None, author)
        _print_calibration(scored, report, base, thresholds, created, activated, changes, as_json)


def _record_calibration_set(
    ctx: Context, scored: ScoredSet, version: int | None, author: str | None
) -> None:
    """Keep the labelled scores (per finding, images that are labelled and scored) so that
    `thresholds preview` and the console can show sensitivity and specificity at any
    threshold later, without the labels file or the images."""
    import numpy as np

    from dicom_node import thresholds
    findings = {}
    for j, finding in enumerate(scored.findings):
        keep = ~np.isnan(scored.labels[:, j]) & ~np.isnan(scored.scores[:, j])
        findings[finding] = (
            [int(v) for v in scored.labels[keep, j]], [float(v) for v in scored.scores[keep, j]]
        )
    provenance = scored.provenance
    with _database(ctx) as database:
        thresholds.record_calibration_set(
            database,
            author=_author(author),
            labels_name=scored.labelled.csv_path.name,
            labels_sha256=str(provenance["labels_sha256"]),
            label_policy=str(provenance["label_policy"]),
            model_name=str(provenance["model"]),
            checkpoint_sha256s=[c["sha256"] for c in provenance["checkpoints"]],
            catalogue_version=str(provenance["catalogue_version"]),
            profile_version=version,
            findings=findings,
        )


def _with_out_of_bag_intervals(
    report: EvaluationReport,
    scored: ScoredSet,
    method: Any,
    kept: Mapping[str, str],
    resamples: int,
    seed: int,
) -> EvaluationReport:
    """For thresholds chosen on these images, intervals of what new images will show
    (`out_of_bag_operating`) instead of the optimistic fixed-threshold ones."""
    import numpy as np

    from ml.calibration import out_of_bag_operating
    if method.kind == "fixed":
        return report
    results = []
    for j, result in enumerate(report.findings):
        if result.operating and result.finding not in kept:
            keep = ~np.isnan(scored.labels[:, j]) & ~np.isnan(scored.scores[:, j])
            operating = out_of_bag_operating(
                scored.labels[keep, j], scored.scores[keep, j], method, resamples, seed
            )
            result = dataclasses.replace(result, operating=operating)
        results.append(result)
    return dataclasses.replace(report, findings=tuple(results))


def _choose(
    scored: ScoredSet, method: Any, base: profiles.ProfileSnapshot, defaults: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, str]]:
    """Threshold per finding, and why the findings that kept the base threshold kept it."""
    import numpy as np

    from ml.calibration import choose_threshold
    thresholds: dict[str, float] = {}
    kept: dict[str, str] = {}
    for j, finding in enumerate(scored.findings):
        current = base.threshold_for(finding, defaults[finding])
        keep = ~np.isnan(scored.labels[:, j]) & ~np.isnan(scored.scores[:, j])
        y, s = scored.labels[keep, j], scored.scores[keep, j]
        if not ((y == 1).any() and (y == 0).any()):
            kept[finding] = "needs positive and negative labels"
        elif method.kind != "fixed":
            thresholds[finding] = choose_threshold(y, s, method)
            continue
        thresholds[finding] = current
    return thresholds, kept


def _save_calibrated(
    ctx: Context,
    scored: ScoredSet,
    thresholds: Mapping[str, float],
    kept: Mapping[str, str],
    method: str,
    base_version: int,
    resamples: int,
    seed: int,
    activate: bool,
    who: str,
    note: str | None,
) -> tuple[profiles.ProfileVersion | None, bool, list[profiles.ThresholdChange]]:
    """The new version (None when it would equal its base), whether it was activated, and
    what changed against the base."""
    from storage import profiles
    changes = {f: t for f, t in thresholds.items() if f not in kept}
    if not changes:
        raise CliError("no finding has both positive and negative labels: nothing to calibrate")
    provenance = {
        **scored.provenance,
        "method": method,
        "bootstrap_resamples": resamples,
        "bootstrap_seed": seed,
        "kept_from_base": dict(kept),
    }
    labels_sha = str(scored.provenance["labels_sha256"])[:12]
    with _session(ctx) as session:
        base = profiles.get_profile(session, base_version)
        if all(base.thresholds.get(f) == t for f, t in changes.items()):
            return None, False, []
        created = profiles.derive_profile(
            session,
            changes,
            author=who,
            method=f"calibrate:{method}",
            base=base_version,
            note=note or f"calibrated on {scored.labelled.csv_path.name} (sha256 {labels_sha})",
            provenance=provenance,
        )
        _audit_version(session, who, "thresholds.create", created.version,
                       {f: base.thresholds.get(f) for f in changes}, dict(changes),
                       created.note)
        was_active = profiles.active_version(session)
        activated = activate and profiles.activate(session, created.version, by=who, note=note)
        if activated:
            _audit_activation(session, who, was_active, created.version, note)
    return created, activated, profiles.diff(base, created)


def _print_calibration(
    scored: ScoredSet,
    report: EvaluationReport,
    base: profiles.ProfileSnapshot,
    thresholds: Mapping[str, float],
    created: profiles.ProfileVersion | None,
    activated: bool,
    changes: Sequence[profiles.ThresholdChange],
    as_json: bool,
) -> None:
    if as_json:
        print_json(
            {
                "version": created.version if created else None,
                "based_on_version": base.version,
                "activated": activated,
                "thresholds": dict(thresholds),
                "changes": [c.as_dict() for c in changes],
                "notes": _notes(scored),
                "report": report.as_dict(),
            }
        )
        return
    print_table(
        f"Calibration on {scored.labelled.csv_path.name}: {report.n_scored} images scored, "
        f"{report.confidence:.0%} out-of-bag bootstrap intervals, i.e. what new studies will show "
        f"({report.resamples} resamples, seed {report.seed})",
        [
            "finding",
            "pos/neg",
            "threshold",
            "sensitivity",
            "specificity",
            "PPV",
            "NPV",
            "F1",
            "MCC",
        ],
        [_calibration_row(r, base) for r in report.findings],
    )
    for line in _notes(scored):
        console.print(line, highlight=False)
    console.print(_outcome(base.version, created, activated), highlight=False)


def _calibration_row(r: FindingResult, base: profiles.ProfileSnapshot) -> list[str]:
    from ml.metrics import METRIC_NAMES
    if r.threshold is None:
        threshold = "-"
    else:
        threshold = f"{_fmt(base.thresholds.get(r.finding))}\n-> {_fmt(r.threshold)}"
    if r.evaluable:
        metrics = [_interval_text((r.operating or {}).get(m)) for m in METRIC_NAMES]
    else:
        metrics = [f"not evaluable: {r.reason}", *[""] * (len(METRIC_NAMES) - 1)]
    return [r.finding, f"{r.n_positive}/{r.n_negative}", threshold, *metrics]


def _outcome(base: int, created: profiles.ProfileVersion | None, activated: bool) -> str:
    if created is None:
        return f"thresholds of v{base} measured; they stay as they are: no new version"
    if activated:
        return (
            f"saved v{created.version} and made it active (was v{base}); "
            f"undo with: dicom-node thresholds activate {base}"
        )
    return (
        f"saved v{created.version}, not active (v{base} stays active); "
        f"use it with: dicom-node thresholds activate {created.version}"
    )


# --- evaluate ------------------------------------------------------------------------------------


@app.command("evaluate")
@_reflow
def evaluate(
    labels_csv: Path = LabelsArgument,
    out: Path = OutOption,
    profile: int = typer.Option(
        None,
        "--profile",
        help="Operating points of this profile version (default: the active one).",
    ),
    uncertain: str = UncertainOption,
    blank: str = BlankOption,
    images_root: Path = ImagesRootOption,
    checkpoint: list[Path] = CheckpointOption,
    resamples: int = ResamplesOption,
    seed: int = SeedOption,
    config: Path = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """AUROC per finding with bootstrap 95% intervals; roc.png, metrics.csv, metrics.json.

    Scores every image once (cached); reports AUROC per finding and the mean over the evaluable
    findings, and sensitivity, specificity, PPV, NPV, F1 and MCC at each finding's threshold in
    the active (or --profile) version, marked on the ROC figure. A finding whose labels hold a
    single class is reported as not evaluable.
    """
    from ml.evaluation import evaluate_scores
    from storage import profiles
    with user_errors():
        ctx = _context(config)
        scored = _score_labelled(
            ctx, labels_csv, checkpoint, _policy(uncertain, blank), images_root
        )
        with _session(ctx) as session:
            version = profiles.active_version(session) if profile is None else profile
            used = profiles.get_profile(session, version)
        defaults = {f.label: f.default_threshold for f in ctx.catalogue.findings}
        thresholds = {f: used.thresholds.get(f, defaults[f]) for f in scored.findings}
        with progress_bar("bootstrap", 1) as advance:
            report = evaluate_scores(
                scored.findings,
                scored.labels,
                scored.scores,
                thresholds,
                resamples=resamples,
                seed=seed,
            )
            advance(1)
        files = _write_evaluation(ctx, scored, report, used, out)
        if as_json:
            print_json(
                {
                    **_evaluation_header(ctx, scored, used),
                    "files": files,
                    "notes": _notes(scored),
                    **report.as_dict(),
                }
            )
            return
        _print_evaluation(scored, report, used, files)


def _evaluation_header(
    ctx: Context, scored: ScoredSet, used: profiles.ProfileVersion
) -> dict[str, Any]:
    return {
        **scored.provenance,
        "clinical_use": ctx.settings.model.clinical_use,
        "profile_version": used.version,
    }


def _write_evaluation(
    ctx: Context,
    scored: ScoredSet,
    report: EvaluationReport,
    used: profiles.ProfileVersion,
    out: Path,
) -> dict[str, str]:
    from ml.evaluation import plot_roc, write_metrics_csv, write_metrics_json
    out.mkdir(parents=True, exist_ok=True)
    files = {name: str(out / name) for name in ("roc.png", "metrics.csv", "metrics.json")}
    write_metrics_csv(report, out / "metrics.csv")
    write_metrics_json(report, out / "metrics.json", _evaluation_header(ctx, scored, used))
    warning = "" if ctx.settings.model.clinical_use else " - NOT FOR CLINICAL USE"
    plot_roc(
        report,
        out / "roc.png",
        title=f"{ctx.settings.model.name} on {scored.labelled.csv_path.name}{warning}",
        footnote=f"operating points: threshold profile v{used.version}; "
        f"labels {scored.labelled.policy.describe()}",
    )
    return files


def _print_evaluation(
    scored: ScoredSet,
    report: EvaluationReport,
    used: profiles.ProfileVersion,
    files: Mapping[str, str],
) -> None:
    rows = []
    for r in report.findings:
        ops = r.operating or {}
        rows.append(
            [
                r.finding,
                f"{r.n_positive}/{r.n_negative}",
                _interval_text(r.auroc) if r.evaluable else f"not evaluable: {r.reason}",
                _fmt(r.threshold),
                _interval_text(ops.get("sensitivity")),
                _interval_text(ops.get("specificity")),
            ]
        )
    if report.mean_auroc:
        rows.append(["mean", "", _interval_text(report.mean_auroc), "", "", ""])
    print_table(
        f"Evaluation on {scored.labelled.csv_path.name}: {report.n_scored} images scored, "
        f"{report.confidence:.0%} bootstrap intervals ({report.resamples} resamples, "
        f"seed {report.seed}), thresholds of v{used.version}",
        ["finding", "pos/neg", "AUROC", "threshold", "sensitivity", "specificity"],
        rows,
    )
    for line in _notes(scored):
        console.print(line, highlight=False)
    console.print(f"wrote {', '.join(files.values())}", highlight=False)
