"""Direction-over-time figures: alignment to the final update, subspace locking, rank-1 trajectory PCA.

Input: the long table. ``alignment_to_final`` / ``subspace_locking`` rows at every step (EffOPD arXiv 2605.11739 Fig. 4b; Geometry of OPD arXiv 2606.07082);
``rank1_pca_evr1`` / ``rank1_pca_evr2`` rows at each run's final step.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..table import BODY_KINDS, KIND, METRIC, RUN, STEP, VALUE
from ._draw import grouped_bars, mean_lines, progress_of
from ._style import body, colors_for, figure, final_rows, label, legend, require, scale

DIRECTION_METRICS = ("alignment_to_final", "subspace_locking")


def alignment_curves(df: pd.DataFrame, metrics: Sequence[str] = DIRECTION_METRICS, *, x: str = "progress",
                     colors: Mapping[str, str] | None = None):
    """Alignment to the final update (EffOPD Fig. 4b) and subspace locking (Geometry of OPD) against training.

    One panel per metric present, one line per run: mean over attention + MLP matrices, interquartile band.
    Where the table has the metric's chance row (``<metric>_chance``: k/d, what a random subspace scores), each
    run's mean chance level is drawn as a dashed line of its colour. The x axis is training progress (step / last
    step) by default, so runs of different lengths compare.
    """
    present = [m for m in metrics if m in set(df[METRIC].unique())]
    if not present:
        require(df, metrics, "alignment_curves")
    rows = body(df)
    colors = colors_for(rows, colors)
    fig, axes = figure(1, len(present), width=3.6 * len(present) + 0.6, height=3.1)
    for ax, m in zip(axes.flat, present):
        mean_lines(ax, rows[rows[METRIC] == m], colors=colors, factor=scale(m), x=x)
        chance_lines(ax, rows[rows[METRIC] == f"{m}_chance"], colors=colors, factor=scale(m), x=x)
        ax.set_ylabel(label(m))
        ax.set_ylim(0, 105)
    legend(fig)
    return fig


CHANCE_LABEL = "chance level (k/d)"


def chance_lines(ax, df: pd.DataFrame, *, colors: Mapping[str, str], factor: float, x: str) -> None:
    """The mean chance level against training, dashed: one grey line when every run has the same (runs of one
    architecture), else one line per run in its colour. Nothing when ``df`` is empty."""
    if df.empty:
        return
    df = df.assign(_x=progress_of(df) if x == "progress" else df[STEP].astype(float))
    means = {name: df[df[RUN] == name].groupby("_x")[VALUE].mean() * factor for name in colors}
    means = {name: m for name, m in means.items() if len(m)}
    first = next(iter(means.values()))
    if all(m.index.equals(first.index) and np.allclose(m.to_numpy(), first.to_numpy(), rtol=1e-9, atol=1e-12)
           for m in means.values()):
        means, colors = {"all": first}, {"all": "0.45"}
    for i, (name, mean) in enumerate(means.items()):
        ax.plot(mean.index, mean.to_numpy(), color=colors[name], linestyle="--", linewidth=1.1,
                label=CHANCE_LABEL if i == 0 else "_nolegend_")


def rank1_evr_bars(df: pd.DataFrame, *, colors: Mapping[str, str] | None = None):
    """Explained variance of the first two PCA components of the u₁(ΔW_t) trajectory, by kind and run.

    A trajectory that moves along one line puts nearly all variance on PC1 (EffOPD appendix).
    Bars: mean over the matrices of each kind (and over all of them, ``all``); error bars: standard deviation.
    """
    names = ("rank1_pca_evr1", "rank1_pca_evr2")
    require(df, names, "rank1_evr_bars")
    rows = final_rows(body(df[df[METRIC].isin(names)]))
    colors = colors_for(rows, colors)
    kinds = [k for k in BODY_KINDS if k in set(rows[KIND])] + ["all"]
    fig, axes = figure(1, 2, width=min(1.0 * len(kinds) * max(len(colors), 1) ** 0.5 + 4, 12), height=3.0,
                       sharey=True)
    for ax, m in zip(axes.flat, names):
        sub = rows[rows[METRIC] == m]
        per_kind = sub.groupby([RUN, KIND], observed=True)[VALUE].agg(["mean", "std"]).reset_index()
        overall = sub.groupby(RUN, observed=True)[VALUE].agg(["mean", "std"]).reset_index().assign(**{KIND: "all"})
        frame = pd.concat([per_kind, overall], ignore_index=True)
        frame[VALUE] = frame["mean"] * 100
        frame["err"] = frame["std"].fillna(0) * 100
        grouped_bars(ax, frame, group=KIND, series=RUN, colors=colors, groups=kinds, err="err")
        ax.set_title(label(m).replace(" (%)", ""))
        ax.set_xlabel("module kind")
        ax.set_ylim(0, 100)
        ax.tick_params(axis="x", rotation=30)
    axes[0, 0].set_ylabel("explained variance ratio (%)")
    legend(fig)
    return fig
