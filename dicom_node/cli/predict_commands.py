"""`dicom-node predict PATH...`: zero-shot findings for DICOM, PNG or JPEG files, no node needed.

Folders are searched recursively for PNG/JPEG files (by extension) and DICOM files (by the
"DICM" marker, whatever their name). Files named explicitly are always tried, so an unreadable
one is reported rather than passed over.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from dicom_node.cli.common import (
    CliError,
    ConfigOption,
    JsonOption,
    console,
    print_json,
    print_table,
    progress_bar,
    settings_from,
    user_errors,
)
from dicom_node.cli.typer_app import app
from dicom_node.settings import Settings
from ml.catalogue import Catalogue, load_catalogue

if TYPE_CHECKING:
    from ml.engine import ImageScore, ZeroShotEngine

BITMAP_SUFFIXES = (".png", ".jpg", ".jpeg")
CUSTOM_CAVEAT = "NOT FOR CLINICAL USE — checkpoints given with --checkpoint"

PathsArgument = typer.Argument(..., help="DICOM, PNG or JPEG files, or folders (recursive).")
CheckpointOption = typer.Option(
    None,
    "--checkpoint",
    help="Checkpoint file (repeat for an ensemble); default: \\[model] checkpoints.",
)
FindingsOption = typer.Option(
    None, "--findings", help="Findings catalogue TOML; default: \\[model] findings_file."
)
ConversionOption = typer.Option(
    None,
    "--conversion",
    help="DICOM to 8 bits: equalize | voi; default: \\[model] dicom_conversion.",
)


@dataclass(frozen=True)
class _Model:
    name: str
    checkpoints: list[Path]
    clinical_use: bool
    caveat: str


@app.command()
def predict(
    paths: list[Path] = PathsArgument,
    checkpoint: list[Path] | None = CheckpointOption,
    findings: Path | None = FindingsOption,
    conversion: str | None = ConversionOption,
    json_output: bool = JsonOption,
    config: Path | None = ConfigOption,
) -> None:
    """Zero-shot CheXzero findings per image: a table for people, --json for scripts."""
    with user_errors():
        settings = settings_from(config)
        conversion = _conversion(conversion or settings.model.dicom_conversion)
        files = collect_inputs(paths)
        model = _model(settings, checkpoint or [])
        catalogue = load_catalogue(findings or settings.resolve(settings.model.findings_file))
        with _engine(settings, model, catalogue) as engine, progress_bar(
            "scoring", len(files), enabled=len(files) > 1
        ) as advance:
            scores = engine.score_paths(files, conversion, on_result=lambda _: advance(1))
        if json_output:
            print_json([_as_json(s, engine, model, catalogue, conversion) for s in scores])
        else:
            _print_people(scores, engine, model, catalogue)


def collect_inputs(paths: Sequence[Path]) -> list[Path]:
    """Files in the order given; folders expanded recursively, sorted."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise CliError(f"no such file or folder: {path}")
    if not files:
        raise CliError(f"no DICOM, PNG or JPEG files found in {', '.join(map(str, paths))}")
    return files


def _is_image(path: Path) -> bool:
    if path.suffix.lower() in BITMAP_SUFFIXES:
        return True
    try:
        with path.open("rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _conversion(value: str) -> str:
    value = value.strip().lower()
    if value not in ("equalize", "voi"):
        raise CliError(f"--conversion must be equalize or voi, got {value!r}")
    return value


def _model(settings: Settings, checkpoints: Sequence[Path]) -> _Model:
    if checkpoints:
        stems = ", ".join(p.stem for p in checkpoints)
        return _Model(f"custom({stems})", list(checkpoints), False, CUSTOM_CAVEAT)
    configured = [settings.resolve(p) for p in settings.model.checkpoints]
    if not configured:
        raise CliError("no checkpoint: pass --checkpoint FILE or set [model] checkpoints")
    m = settings.model
    return _Model(m.name, configured, m.clinical_use, m.caveat)


def _engine(settings: Settings, model: _Model, catalogue: Catalogue) -> ZeroShotEngine:
    from ml.engine import ZeroShotEngine  # torch loads only when a model is needed

    for path in model.checkpoints:
        if not path.is_file():
            raise CliError(f"checkpoint not found: {path}")
    return ZeroShotEngine(
        model.checkpoints,
        catalogue,
        device=settings.model.device,
        cpu_threads=settings.model.cpu_threads,
        batch_size=settings.model.batch_size,
        name=model.name,
        prepare_mode=settings.model.prepare_mode,
        prepare_workers=settings.model.prepare_workers or None,
        prepare_reduced=settings.model.reduced_resolution,
    )


def _as_json(
    score: ImageScore, engine: ZeroShotEngine, model: _Model, catalogue: Catalogue, conversion: str
) -> dict[str, Any]:
    enabled = [catalogue.by_label(label) for label in engine.labels]
    thresholds = {f.label: f.default_threshold for f in enabled}
    above = None
    if score.probabilities is not None:
        above = {k: p >= thresholds[k] for k, p in score.probabilities.items()}
    return {
        "path": score.path,
        "probabilities": score.probabilities,
        "thresholds": thresholds,
        "above_threshold": above,
        "derived": {f.label: f.derivation for f in enabled if f.derivation},
        "skipped_reason": score.skipped_reason,
        "flags": list(score.flags),
        "model": {
            "name": engine.identity.name,
            "checkpoint_sha256s": list(engine.identity.checkpoint_sha256s),
            "catalogue_version": catalogue.version,
            "conversion": conversion,
        },
        "clinical_use": model.clinical_use,
        "note": None if model.clinical_use else model.caveat,
    }


def _print_people(
    scores: Sequence[ImageScore], engine: ZeroShotEngine, model: _Model, catalogue: Catalogue
) -> None:
    if not model.clinical_use:
        console.print(f"[bold red]{model.caveat}[/]", highlight=False)
    shas = ", ".join(s[:12] for s in engine.identity.checkpoint_sha256s)
    console.print(f"model {engine.identity.name} ({shas}), findings {catalogue.version}",
                  highlight=False, markup=False)
    for score in scores:
        flags = f" [{', '.join(score.flags)}]" if score.flags else ""
        if score.probabilities is None:
            console.print(f"{score.path}: skipped: {score.skipped_reason}{flags}",
                          highlight=False, markup=False)
            continue
        rows = []
        for finding in map(catalogue.by_label, engine.labels):
            p = score.probabilities[finding.label]
            call = "above" if p >= finding.default_threshold else "below"
            label = f"{finding.label} (derived)" if finding.derivation else finding.label
            rows.append((label, f"{p:.4f}", f"{finding.default_threshold:.3f}", call))
        print_table(f"{score.path}{flags}", ("finding", "score", "threshold", "call"), rows)
    if not model.clinical_use:
        console.print(f"[bold red]{model.caveat}[/]", highlight=False)
