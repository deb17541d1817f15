"""The report's figures: which figure each input gets (captions from the plotting functions' docstrings), and drawing
them to files. A figure whose data is absent is skipped with the reason (:class:`~opd_dynamics.plots.PlotDataError`).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from ..table import METRIC, RUN, STEP


@dataclass
class Figure:
    slug: str
    title: str
    caption: str
    draw: Callable[[], object]


def _caption(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def figures(inputs: Inputs, colors: dict[str, str]) -> list[Figure]:
    import opd_dynamics.plots as P

    df, st = inputs.table, inputs.studies
    out: list[Figure] = []
    if len(df):
        lasts = df.groupby(RUN, observed=True)[STEP].max()
        x = "step" if lasts.nunique() == 1 else "progress"
        heat = "relative_update" if "relative_update" in set(df[METRIC]) else "frobenius"
        out += [
            Figure("table1", "Table 1 as a figure", _caption(P.table1_bars),
                   lambda: P.table1_bars(df, colors=colors)),
            Figure("metrics_vs_step", "Update geometry during training", _caption(P.metric_vs_step),
                   lambda: P.metric_vs_step(df, x=x, colors=colors)),
            Figure("alignment", "Direction: alignment to the final update and subspace locking",
                   _caption(P.alignment_curves), lambda: P.alignment_curves(df, colors=colors)),
            Figure("layer_step_heatmap", f"Where and when: {heat} by layer and step", _caption(P.layer_step_heatmap),
                   lambda: P.layer_step_heatmap(df, heat, runs=[r for r in colors if r in set(df[RUN])])),
            Figure("layer_norms", "Per-layer update size", _caption(P.layer_norm_bars),
                   lambda: P.layer_norm_bars(df, runs=[r for r in colors if r in set(df[RUN])])),
            Figure("rank1_pca", "Rank-1 trajectory PCA", _caption(P.rank1_evr_bars),
                   lambda: P.rank1_evr_bars(df, colors=colors)),
            Figure("principal_angles", "Principal angles between W₀ and W_T", _caption(P.principal_angles_by_kind),
                   lambda: P.principal_angles_by_kind(df, colors=colors)),
            Figure("sparsity_bf16", "bf16-visible update sparsity", _caption(P.sparsity_by_kind),
                   lambda: P.sparsity_by_kind(df, colors=colors)),
        ]
    if st is not None:
        for study in dict.fromkeys(st["study"]):
            metrics = list(dict.fromkeys(st.loc[st["study"] == study, "metric"]))
            for metric in metrics:  # one figure per evaluator: scores on different scales never share an axis
                several = len(metrics) > 1
                out += _study_figures(P, study, st[(st["study"] == study) & (st["metric"] == metric)], df, colors,
                                      suffix=f"_{metric}" if several else "", note=f" ({metric})" if several else "")
    return out


def _study_figures(P, study: str, st: pd.DataFrame, df: pd.DataFrame, colors, *, suffix: str,
                   note: str) -> list[Figure]:
    """The figure of one (study, metric) slice of the study frames; bars for a study without its own figure."""
    slug, title = f"study_{study}{suffix}", study.replace("_", " ").capitalize() + note
    fn = P.STUDY_FIGURES.get(study)
    if study == "sliding_window":
        return [Figure(slug, "Sliding-window intervention" + note, _caption(fn),
                       lambda: P.sliding_window(st, df if len(df) else None, colors=colors))]
    if fn is not None:
        cap = _caption(fn) + (" Replay cannot see how training would have continued after an accepted "
                              "extrapolation." if study == "effopd" else "")
        return [Figure(slug, title, cap, lambda: fn(st, colors=colors))]
    return [Figure(slug, title, _caption(P.study_bars), lambda: P.study_bars(st, study, colors=colors))]


def draw(figs: list[Figure], folder: Path, formats: Sequence[str]) -> tuple[list[tuple], list[tuple]]:
    """Draw each figure into ``folder/SLUG.FORMAT``; return ``[(figure, png bytes, width px)]`` drawn and
    ``[(figure, why)]`` skipped."""
    from ..plots import PlotDataError
    from ..plots._style import pyplot

    plt = pyplot()
    drawn, skipped = [], []
    for fig in figs:
        try:
            mpl_fig = fig.draw()
        except PlotDataError as e:
            skipped.append((fig, str(e)))
            continue
        try:
            for fmt in formats:
                mpl_fig.savefig(folder / f"{fig.slug}.{fmt}")
            png = (folder / f"{fig.slug}.png").read_bytes() if "png" in formats else _png(mpl_fig)
        finally:
            plt.close(mpl_fig)
        drawn.append((fig, png, int(mpl_fig.get_size_inches()[0] * 96)))
    return drawn, skipped


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
