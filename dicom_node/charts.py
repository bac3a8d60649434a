"""Server-made charts for the console and the CLI: matplotlib (already a dependency for the
ROC figure) renders SVG text, so pages need no JavaScript chart library and no build step.
Every chart says that its values are scores, not probabilities, and carries the model's
not-for-clinical-use caveat when it applies."""

from __future__ import annotations

import io
from collections.abc import Sequence

NOT_CLINICAL = "NOT FOR CLINICAL USE"


def histogram_svg(
    title: str,
    edges: Sequence[float],
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    threshold: float | None = None,
    clinical_use: bool = False,
    footnote: str = "",
) -> str:
    """An SVG of step histograms, each series normalised to a fraction of its own total (so a
    200-study series compares with a 2000-image one; the first filled, the others as lines
    that stay visible over it), and the threshold as a dashed line.
    `edges`: bins + 1 score edges; each series: (name, counts per bin)."""
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.4), dpi=100)
    FigureCanvasSVG(figure)
    axes = figure.add_axes((0.1, 0.22, 0.86, 0.66))
    styles = ({"fill": True, "alpha": 0.35}, {"linestyle": "-"}, {"linestyle": ":"})
    for i, (name, counts) in enumerate(series):
        total = sum(counts)
        if not total:
            continue
        fractions = [c / total for c in counts]
        axes.stairs(fractions, list(edges), label=f"{name} (n={total})", linewidth=1.8,
                    color=f"C{i}", **styles[i % len(styles)])
    if threshold is not None:
        axes.axvline(threshold, color="0.2", linestyle="--", linewidth=1,
                     label=f"threshold {threshold:.3f}")
    axes.set(xlim=(edges[0], edges[-1]), xlabel="score (not a probability)",
             ylabel="fraction", title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, frameon=False)
    caveat = "" if clinical_use else NOT_CLINICAL
    note = " - ".join(part for part in (caveat, footnote) if part)
    figure.text(0.01, 0.02, note, fontsize=7, color="0.25")
    out = io.StringIO()
    figure.savefig(out, format="svg")
    return out.getvalue()
