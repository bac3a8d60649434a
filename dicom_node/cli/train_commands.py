"""`dicom-node synth` (synthetic radiographs with reports and labels) and `dicom-node train`
(CheXzero's contrastive training on image + report pairs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from dicom_node.cli.common import (
    ConfigOption,
    JsonOption,
    print_json,
    print_table,
    progress_bar,
    progress_display,
    user_errors,
)
from dicom_node.cli.typer_app import app

SynthOutOption = typer.Option(..., "--out", help="Folder to write the data set into.")
DataOption = typer.Option(..., "--data", help="CSV of image path + report, a folder with "
                          "reports.csv, or a MIMIC-CXR report tree.")
TrainOutOption = typer.Option(..., "--out", help="Folder for checkpoint.pt, training state, logs.")
InitOption = typer.Option(None, "--init", help="Start from this checkpoint (OpenAI-layout state "
                          "dict) instead of from scratch.")
LabelsOption = typer.Option(None, "--labels", help="CheXpert-layout labels for validation AUROC "
                            "(default: labels.csv beside the data).")


@app.command()
def synth(
    out: Path = SynthOutOption,
    studies: int = typer.Option(100, "--studies", help="Number of studies."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same bytes."),
    compress: str = typer.Option("none", "--compress", help="none | rle | jpegls | j2k (DICOM)."),
    image_format: str = typer.Option("dicom", "--format", help="dicom | png (8-bit, as the "
                                     "engine converts the DICOM; fastest for training)."),
    height: int = typer.Option(1024, "--height", help="Image rows of the frontal view."),
    laterals: bool = typer.Option(True, "--laterals/--no-laterals",
                                  help="Add a lateral view to about 30% of DICOM studies."),
    workers: int = typer.Option(1, "--workers", help="Processes rendering in parallel."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Write synthetic chest radiographs (DICOM or PNG), labels.csv and reports.csv."""
    from ml.synth.dataset import SynthOptions, generate
    from ml.synth.spec import SYNTH_FINDINGS

    with user_errors():
        if height < 64 or height > 4096:
            raise ValueError("--height must be between 64 and 4096")
        options = SynthOptions(out, studies, seed, image_format, compress, height,
                               max(1, workers), laterals)
        with progress_bar("rendering studies", studies, not as_json) as advance:
            written = generate(options, advance)
    counts = {name: sum(1 for s in written if s.spec.state(name) == "present")
              for name in SYNTH_FINDINGS}
    images = sum(len(s.images) for s in written)
    summary = {"out": str(out), "studies": len(written), "images": images, "seed": seed,
               "format": image_format, "compress": compress, "present": counts,
               "labels": str(out / "labels.csv"), "reports": str(out / "reports.csv")}
    if as_json:
        print_json(summary)
        return
    print_table(f"{len(written)} studies, {images} images in {out}", ["finding", "present"],
                [(k, v) for k, v in counts.items()])


@app.command()
def train(
    data: Path = DataOption,
    out: Path = TrainOutOption,
    init: Path | None = InitOption,
    arch: str = typer.Option("demo", "--arch", help="From scratch: 'demo' (small ResNet image "
                             "tower), 'demo-vit', or key=value,... over embed_dim, image_size, "
                             "patch_size, vision_width, vision_layers, text_width, text_layers, "
                             "resnet_layers (e.g. 1-1-1-1; 0: ViT) (heads = width // 64)."),
    epochs: int = typer.Option(4, "--epochs"),
    steps: int | None = typer.Option(None, "--steps", help="Stop after this many batches "
                                        "(overrides --epochs)."),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr"),
    optimizer: str = typer.Option("sgd", "--optimizer", help="sgd | adamw"),
    momentum: float = typer.Option(0.9, "--momentum", help="SGD momentum."),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    schedule: str = typer.Option("constant", "--schedule", help="constant | cosine (needs --steps)."),
    warmup_steps: int = typer.Option(0, "--warmup-steps"),
    seed: int = typer.Option(1234, "--seed"),
    text_column: str | None = typer.Option(None, "--text-column", help="Train on this CSV "
                                              "column as is instead of the report's impression."),
    image_column: str | None = typer.Option(None, "--image-column"),
    impression_fallback: str = typer.Option("findings", "--impression-fallback",
                                            help="No impression: findings | report | none."),
    sentence_sampling: float = typer.Option(0.0, "--sentence-sampling", help="Probability of "
                                            "training on a few sampled sentences of the text."),
    sentence_max: int = typer.Option(3, "--sentence-max", help="At most this many sentences "
                                     "when sampling (1 to this many, uniformly)."),
    focus: str = typer.Option("", "--focus", help="Comma-separated words; a batch may train on "
                              "the report sentences that mention one of them (curriculum)."),
    focus_probability: float = typer.Option(0.0, "--focus-probability"),
    stop_at: int | None = typer.Option(None, "--stop-at", help="End at this step of the "
                                       "schedule (saving); --resume continues it."),
    augment: bool = typer.Option(False, "--augment/--no-augment", help="Random shift/zoom."),
    val_fraction: float = typer.Option(0.05, "--val-fraction"),
    validate_every: int = typer.Option(100, "--validate-every", help="Batches; 0: only at the end."),
    save_every: int = typer.Option(100, "--save-every", help="Batches between saved states."),
    labels: Path | None = LabelsOption,
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N"),
    threads: int = typer.Option(0, "--threads", help="CPU threads; 0: torch's default."),
    amp: bool = typer.Option(True, "--amp/--no-amp", help="Mixed precision: float16 on CUDA, bfloat16 on CPUs with AVX512-BF16/AMX."),
    half: bool = typer.Option(False, "--half/--no-half", help="Store checkpoint.pt in float16."),
    resume: bool = typer.Option(False, "--resume", help="Continue from out/training-state.pt."),
    config: Path | None = ConfigOption,
    as_json: bool = JsonOption,
) -> None:
    """Contrastive image-report training (CheXzero recipe); writes an OpenAI-layout checkpoint."""
    from ml.training.config import TrainConfig, architecture_from_text
    from ml.training.loop import train as run_training

    with user_errors():
        cfg = TrainConfig(
            data=data, out=out, init=init, architecture=architecture_from_text(arch),
            epochs=epochs, steps=steps, batch_size=batch_size, lr=lr, optimizer=optimizer,
            momentum=momentum, weight_decay=weight_decay, schedule=schedule,
            warmup_steps=warmup_steps, seed=seed,
            text_source="column" if text_column else "impression", text_column=text_column,
            image_column=image_column, impression_fallback=impression_fallback,
            sentence_sampling=sentence_sampling, sentence_max=sentence_max, stop_at=stop_at,
            focus_terms=tuple(t.strip().lower() for t in focus.split(",") if t.strip()),
            focus_probability=focus_probability,
            augment=augment, val_fraction=val_fraction,
            validate_every=validate_every, save_every=save_every, labels_csv=labels,
            device=device, threads=threads, amp=amp, half_export=half, resume=resume,
        )
        if init is not None and not init.is_file():
            raise FileNotFoundError(f"--init checkpoint not found: {init}")
        with _phases(not as_json) as progress:
            result = run_training(cfg, progress)
    payload = {"checkpoint": str(result.checkpoint), "architecture": result.architecture,
               "precision": result.precision, "steps": result.steps,
               "first_loss": result.first_loss, "last_loss": result.last_loss,
               "seconds": round(result.seconds, 1), "text_sources": result.text_sources,
               **result.validation}
    if as_json:
        print_json(payload)
        return
    rows = [(k, v) for k, v in payload.items() if k != "auroc"]
    rows += [(f"AUROC {k}", f"{v:.3f}") for k, v in payload.get("auroc", {}).items()]
    print_table("training finished", ["", "value"], rows)


@contextmanager
def _phases(enabled: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """One progress bar per phase (reading images, training)."""
    if not enabled:
        yield None
        return
    with progress_display() as progress:
        tasks: dict[str, int] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = progress.add_task(phase, total=total)
            if phase == "images":
                progress.advance(tasks[phase], done)
            else:
                progress.update(tasks[phase], completed=done)

        yield update
