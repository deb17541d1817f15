"""Where in depth the update lands: layer × step heatmaps per kind and per-layer ‖ΔW‖_F bars.

Input: the long table. Layers are the table's 0-based ``layer``; modules without a layer are left out.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..table import ATTN_KINDS, BODY_KINDS, KIND, LAYER, METRIC, MLP_KINDS, RUN, STEP, VALUE
from ._style import FAMILY_COLORS, OKABE_ITO, PlotDataError, body, colors_for, figure, label, legend, require, scale

KIND_COLORS = dict(zip(BODY_KINDS, (OKABE_ITO["sky"], OKABE_ITO["blue"], OKABE_ITO["green"], OKABE_ITO["black"],
                                    OKABE_ITO["orange"], OKABE_ITO["vermillion"], OKABE_ITO["purple"])))


def _layered(df: pd.DataFrame, metric: str, name: str) -> pd.DataFrame:
    require(df, [metric], name)
    rows = body(df[df[METRIC] == metric])
    rows = rows[rows[LAYER].notna()]
    if rows.empty:
        raise PlotDataError(f"{name}: no {metric} rows for attention/MLP matrices inside layers",
                            hint="analyze without a --select that drops the transformer blocks")
    return rows.astype({LAYER: int})


def layer_step_heatmap(df: pd.DataFrame, metric: str = "relative_update", *, kinds: Sequence[str] = BODY_KINDS,
                       runs: Sequence[str] | None = None):
    """Layer × step heatmaps of one metric: a row of panels per run, a column per kind, one shared colour scale.

    Cells average the modules of that (layer, kind) (one module in standard architectures).
    Colour map: viridis (perceptually uniform, readable in grey and by colour-blind readers).
    """
    rows = _layered(df, metric, "layer_step_heatmap")
    runs = list(runs) if runs is not None else list(colors_for(rows))
    kinds = [k for k in kinds if k in set(rows[KIND])]
    layers = np.arange(rows[LAYER].min(), rows[LAYER].max() + 1)
    f = scale(metric)
    vmin, vmax = rows[VALUE].min() * f, rows[VALUE].max() * f
    fig, axes = figure(len(runs), len(kinds), width=min(1.55 * len(kinds) + 1.6, 14),
                       height=min(0.16 * len(layers) + 1.4, 4.5) * len(runs) + 0.4, sharey=True)
    image = None
    for r, run in enumerate(runs):
        sub = rows[rows[RUN] == run]
        steps = sorted(sub[STEP].unique())
        for c, kind in enumerate(kinds):
            ax = axes[r, c]
            grid = (sub[sub[KIND] == kind].pivot_table(index=LAYER, columns=STEP, values=VALUE, aggfunc="mean")
                    .reindex(index=layers, columns=steps)) * f
            image = ax.imshow(grid.to_numpy(dtype=float), aspect="auto", origin="lower", cmap="viridis",
                              vmin=vmin, vmax=vmax, interpolation="nearest",
                              extent=(-0.5, len(steps) - 0.5, layers[0] - 0.5, layers[-1] + 0.5))
            ax.grid(False)
            ticks = range(0, len(steps), max(1, len(steps) // 4))
            ax.set_xticks(list(ticks), [str(steps[i]) for i in ticks])
            if r == 0:
                ax.set_title(kind)
            if r == len(runs) - 1:
                ax.set_xlabel("step")
            if c == 0:
                ax.set_ylabel(f"{run}\nlayer (0-based)")
    if image is not None:
        fig.colorbar(image, ax=axes, label=label(metric), shrink=0.9, pad=0.01)
    return fig


def layer_norm_bars(df: pd.DataFrame, *, step: int | None = None, by: str = "family",
                    runs: Sequence[str] | None = None):
    """Per-layer update size ‖ΔW‖_F = sqrt(Σ ‖ΔW_m‖_F²) over the layer's modules, one panel per run.

    ``by="family"`` groups attention (q/k/v/o) and MLP (gate/up/down); ``by="kind"`` shows each kind.
    ``step`` defaults to each run's last step.
    """
    if by not in ("family", "kind"):
        raise PlotDataError(f"layer_norm_bars: by={by!r}", hint="use by='family' or by='kind'")
    rows = _layered(df, "frobenius", "layer_norm_bars")
    runs = list(runs) if runs is not None else list(colors_for(rows))
    if by == "family":
        groups = {"attention": ATTN_KINDS, "mlp": MLP_KINDS}
        colors = FAMILY_COLORS
    else:
        groups = {k: (k,) for k in BODY_KINDS if k in set(rows[KIND])}
        colors = KIND_COLORS
    layers = np.arange(rows[LAYER].min(), rows[LAYER].max() + 1)
    fig, axes = figure(len(runs), 1, width=min(0.22 * len(layers) * len(groups) + 3.0, 12),
                       height=2.3 * len(runs) + 0.8, sharex=True, sharey=True)
    width = 0.8 / len(groups)
    for ax, run in zip(axes.flat, runs):
        sub = rows[rows[RUN] == run]
        at = step if step is not None else sub[STEP].max()
        sub = sub[sub[STEP] == at]
        if sub.empty:
            raise PlotDataError(f"layer_norm_bars: run {run!r} has no step {at}",
                                hint=f"choose one of {sorted(rows[rows[RUN] == run][STEP].unique())}")
        for i, (g, kinds) in enumerate(groups.items()):
            sq = (sub[sub[KIND].isin(kinds)].assign(sq=lambda d: d[VALUE] ** 2)
                  .groupby(LAYER)["sq"].sum().reindex(layers))
            ax.bar(layers + (i - (len(groups) - 1) / 2) * width, np.sqrt(sq.to_numpy(dtype=float)), width * 0.92,
                   color=colors[g], label=g, edgecolor="white", linewidth=0.4)
        ax.set_title(f"{run}, step {at}")
        ax.set_ylabel(r"$\|\Delta W\|_F$ of layer")
        ax.grid(axis="x", visible=False)
    axes[-1, 0].set_xlabel("layer (0-based)")
    axes[-1, 0].set_xticks(layers[:: max(1, len(layers) // 16)])
    legend(fig)
    return fig
