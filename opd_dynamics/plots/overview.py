"""Run-level figures: EffOPD Table 1 as grouped bars, and any metric against training step.

Input: the long table (``run, step, ref_step, module, layer, expert, kind, metric, value``). Means are
unweighted over attention + MLP matrices, as in :func:`opd_dynamics.table1`.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import pandas as pd

from ..summary import table1
from ..table import METRIC, RUN, VALUE
from ._draw import grouped_bars, mean_lines
from ._style import PlotDataError, body, colors_for, figure, label, legend, require, scale

TABLE1_METRICS = ("spectral_norm", "spectral_ratio", "effective_rank", "top1pct_ratio")


def table1_bars(df: pd.DataFrame, metrics: Sequence[str] = TABLE1_METRICS, *,
                colors: Mapping[str, str] | None = None):
    """EffOPD Table 1 as a figure: one panel per metric, one bar per run, at each run's final step.

    Bars are the unweighted mean over attention + MLP matrices; the value is written above each bar.
    Metrics absent from the table are left out; none present raises :class:`PlotDataError`.
    """
    present = [m for m in metrics if m in set(df[METRIC].unique())]
    if not present:
        require(df, metrics, "table1_bars")
    wide = table1(df, final_only=True)
    colors = colors_for(wide, colors)
    ncols = min(len(present), 4)
    nrows = -(-len(present) // ncols)
    fig, axes = figure(nrows, ncols, width=2.6 * ncols + 0.8, height=2.6 * nrows + 0.7)
    for ax, m in zip(axes.flat, present):
        frame = pd.DataFrame({"metric": m, RUN: wide[RUN], VALUE: wide[m] * scale(m)})
        grouped_bars(ax, frame, group="metric", series=RUN, colors=colors, annotate=True)
        ax.set_xticks([])
        ax.set_ylabel(label(m))
    for ax in list(axes.flat)[len(present):]:
        ax.set_visible(False)
    fig.suptitle("Final step, mean over attention + MLP matrices")
    legend(fig)
    return fig


def metric_vs_step(df: pd.DataFrame, metrics: Sequence[str] | str = TABLE1_METRICS, *, x: str = "step",
                   colors: Mapping[str, str] | None = None, band: bool = True):
    """One panel per metric: the mean over attention + MLP matrices against step, one line per run.

    The shaded band is the interquartile range over matrices. ``x="progress"`` puts runs of different
    lengths on one axis (step / last step, in %).
    """
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if x not in ("step", "progress"):
        raise PlotDataError(f"metric_vs_step: x={x!r}", hint="use x='step' or x='progress'")
    present = [m for m in metrics if m in set(df[METRIC].unique())]
    if not present:
        require(df, metrics, "metric_vs_step")
    rows = body(df)
    colors = colors_for(rows, colors)
    ncols = min(len(present), 2) if len(present) > 1 else 1
    nrows = -(-len(present) // ncols)
    fig, axes = figure(nrows, ncols, width=3.6 * ncols + 0.6, height=2.6 * nrows + 0.8)
    for ax, m in zip(axes.flat, present):
        mean_lines(ax, rows[rows[METRIC] == m], colors=colors, factor=scale(m), x=x, band=band)
        ax.set_ylabel(label(m))
    for ax in list(axes.flat)[len(present):]:
        ax.set_visible(False)
    legend(fig)
    return fig
