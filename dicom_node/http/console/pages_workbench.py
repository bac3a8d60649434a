"""Prompt workbench: type a label and a positive/negative prompt pair, see its score
distribution on recent studies (from the image embeddings stored with their results: one text
encoding, no image pass) and, with a labelled set (CSV of study_instance_uid,label), its AUROC
with a bootstrap interval; then add it to the findings catalogue as a new, disabled revision
(admins; audited), and enable or disable added findings. Handlers call dicom_node.workbench
and dicom_node.findings only."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import UploadFile

from dicom_node import findings, workbench
from dicom_node.charts import histogram_svg
from dicom_node.http.console.web import (
    AdminChange,
    AnyChange,
    Reader,
    actor,
    context,
    done,
    render,
)

router = APIRouter()
MAX_LABELS_BYTES = 5 * 2**20


@router.get("/workbench", response_class=HTMLResponse)
def workbench_page(request: Request, who: Reader) -> HTMLResponse:
    return _page(request, who, trial=None, error=None, form={})


def _page(request: Request, who: Any, trial: Any, error: str | None,
          form: dict[str, Any]) -> HTMLResponse:
    ctx = context(request)
    catalogue = findings.node_catalogue(ctx.settings, ctx.database)
    revisions = findings.history(ctx.database)
    added = {r.label for r in revisions if r.action == "add"}
    return render(
        request, "workbench.html", who, "workbench", trial=trial, error=error, form=form,
        chart=_chart(ctx.settings, trial) if trial and trial.scores else None,
        revisions=list(reversed(revisions)),
        added=[f for f in catalogue.findings if f.label in added],
        private_scheme=findings.PRIVATE_SCHEME, last_default=workbench.DEFAULT_RECENT_STUDIES,
    )


@router.post("/workbench/try", response_class=HTMLResponse)
async def try_pair(request: Request, who: AnyChange) -> HTMLResponse:
    """Trying changes nothing (any signed-in user); it is a POST for the labels upload."""
    ctx = context(request)
    form = await request.form()
    values = {k: str(form.get(k) or "") for k in ("label", "positive", "negative", "last")}
    upload = form.get("labels")
    try:
        pair = workbench.PromptPair(values["label"], values["positive"], values["negative"])
        last = int(values["last"] or workbench.DEFAULT_RECENT_STUDIES)
        with tempfile.TemporaryDirectory(prefix="dicom-node-labels-") as folder:
            labels = await _saved(upload, Path(folder))
            trial = workbench.try_prompt(ctx.database, ctx.settings, pair, last=last,
                                         labels_csv=labels)
    except (ValueError, OSError) as exc:
        return _page(request, who, trial=None, error=str(exc), form=values)
    return _page(request, who, trial=trial, error=None, form=values)


async def _saved(upload: Any, folder: Path) -> Path | None:
    """The uploaded labels CSV written to `folder` under its own (sanitised) name, or None."""
    if not isinstance(upload, UploadFile) or not upload.filename:
        return None
    data = await upload.read(MAX_LABELS_BYTES + 1)
    if len(data) > MAX_LABELS_BYTES:
        raise ValueError(f"the labels file is larger than {MAX_LABELS_BYTES // 2**20} MiB")
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(upload.filename).name)
    path = folder / (name or "labels.csv")
    path.write_bytes(data)
    return path


@router.post("/workbench/add")
def add(
    request: Request, who: AdminChange, label: str = Form(""), positive: str = Form(""),
    negative: str = Form(""), code_kind: str = Form("private"), code_value: str = Form(""),
    code_scheme: str = Form(""), code_meaning: str = Form(""),
    default_threshold: str = Form("0.5"), note: str = Form(""),
) -> Response:
    ctx = context(request)
    try:
        pair = workbench.PromptPair(label, positive, negative)
        scheme = findings.PRIVATE_SCHEME if code_kind == "private" else code_scheme.strip()
        if not code_value.strip() or not scheme:
            raise ValueError("a finding needs a code value (and a scheme for a standard code)")
        threshold = float(default_threshold)
        trial = workbench.try_prompt(ctx.database, ctx.settings, pair)
        new = findings.NewFinding(pair.label, pair.positive, pair.negative, code_value,
                                  scheme, code_meaning.strip() or None, threshold)
        revision, catalogue = findings.add_finding(
            ctx.settings, ctx.database, new, actor=actor(who), note=note, now=ctx.clock(),
            provenance={"model": trial.model_name,
                        "checkpoints": list(trial.checkpoint_sha256s),
                        "tried_on_studies": len(trial.scores),
                        "mean_score": trial.summary()["mean"]},
        )
    except (ValueError, OSError) as exc:
        return done(request, who, f"Not added: {exc}", "/workbench")
    return done(request, who, f"Added {revision.label} as catalogue revision "
                f"{revision.revision} (catalogue {catalogue.version}). It is not scored until "
                "it is enabled, from the node's next start on.", "/workbench#catalogue")


@router.post("/workbench/enabled")
def set_enabled(
    request: Request, who: AdminChange, label: str = Form(""), enabled: str = Form(""),
    note: str = Form(""),
) -> Response:
    ctx = context(request)
    want = enabled == "true"
    try:
        revision = findings.set_enabled(ctx.settings, ctx.database, label, want,
                                        actor=actor(who), note=note, now=ctx.clock())
    except ValueError as exc:
        return done(request, who, f"Not changed: {exc}", "/workbench#catalogue")
    return done(request, who, f"{revision.label} {revision.action}d (catalogue revision "
                f"{revision.revision}); it takes effect when the node next starts.",
                "/workbench#catalogue")


def _chart(settings: Any, trial: Any) -> str:
    svg = histogram_svg(
        f"{trial.pair.label}: '{trial.pair.positive}' vs '{trial.pair.negative}'",
        trial.edges, [("recent studies", trial.counts)], threshold=trial.threshold,
        clinical_use=settings.model.clinical_use, footnote=settings.model.name,
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
