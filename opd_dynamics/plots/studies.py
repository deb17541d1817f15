"""Intervention and EffOPD figures (EffOPD arXiv 2605.11739 Figs. 1a–4c and §4; docs/interventions.md, docs/effopd.md), drawn from a study frame (see :mod:`.frames`).

Colour always says which run; line style and marker say which variant; dashed grey lines are references.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from ..table import ATTN_KINDS, KIND, LAYER, MLP_KINDS, STEP
from ..table import METRIC as LT_METRIC
from ..table import RUN as LT_RUN
from ..table import VALUE as LT_VALUE
from ._draw import grouped_bars
from ._style import (FAMILY_COLORS, LINESTYLES, MARKERS, REFERENCE_STYLES, PlotDataError, body, colors_for, figure,
                     legend)
from ..frames import METRIC, REFERENCE_PREFIX, RUN, STUDY, UPDATE_NORM, VALUE, VARIANT, X, validate_study

_VARIANT_NAMES = {"mlp": "MLP window", "attn": "attention window"}
_X_LABELS = {"sliding_window": "window centre layer (0-based)",
             "norm_scaling": r"scale $\alpha$ in $W_0 + \alpha\,\Delta W_T$",
             "spectral_partition": "singular components kept (%)",
             "early_rescale": r"rescale strength $\beta$",
             "effopd": "training step"}
_TITLES = {"sliding_window": "Sliding-window restore of the update",
           "norm_scaling": "Scaling the final update",
           "spectral_partition": "Keeping part of each update's spectrum",
           "early_rescale": "Norm rescaling of early checkpoints",
           "effopd": "EffOPD extrapolation vs plain OPD"}


def _study(frame: pd.DataFrame, study: str, name: str) -> pd.DataFrame:
    frame = validate_study(frame)
    sub = frame[frame[STUDY] == study]
    if sub.empty:
        raise PlotDataError(f"{name}: no rows with study={study!r} (found {sorted(frame[STUDY].unique())})",
                            hint="pass the study frame the intervention/EffOPD command wrote")
    metrics = sorted(sub[METRIC].unique())
    if len(metrics) > 1:  # scores on different scales never share an axis
        raise PlotDataError(f"{name}: study {study!r} holds several metrics {metrics}",
                            hint=f"draw one at a time, e.g. frame[frame.metric == {metrics[0]!r}]")
    return sub


def _ylabel(sub: pd.DataFrame) -> str:
    metrics = sorted(sub[METRIC].unique())
    return " / ".join(metrics).replace("_", " ") if metrics else "score"


def _references(ax, sub: pd.DataFrame, colors: Mapping[str, str]) -> None:
    """Horizontal lines for ``reference:<label>`` rows; base and teacher are drawn once, shared by all runs."""
    refs = sub[sub[VARIANT].str.startswith(REFERENCE_PREFIX)]
    multi = len(colors) > 1
    for i, ((run, variant), g) in enumerate(refs.groupby([RUN, VARIANT], observed=True, sort=False)):
        what = variant.removeprefix(REFERENCE_PREFIX)
        shared = what in ("base", "teacher") or not multi
        name = what if shared else f"{run} {what}"
        if name in [line.get_label() for line in ax.lines]:
            continue
        style, grey = REFERENCE_STYLES.get(what, (LINESTYLES[1 + i % 3], "#555555"))
        ax.axhline(g[VALUE].mean(), color=grey if shared else colors.get(run, grey), linestyle=style,
                   linewidth=1.1, label=name, zorder=1)


def _lines(ax, sub: pd.DataFrame, colors: Mapping[str, str], x: str = X) -> None:
    curves = sub[~sub[VARIANT].str.startswith(REFERENCE_PREFIX) & (sub[VARIANT] != "accepted")]
    variants = list(dict.fromkeys(curves[VARIANT]))
    for run, color in colors.items():
        for j, v in enumerate(variants):
            g = curves[(curves[RUN] == run) & (curves[VARIANT] == v)].groupby(x)[VALUE].mean()
            if g.empty:
                continue
            shown = _VARIANT_NAMES.get(v, v)
            name = " ".join(p for p in (run if len(colors) > 1 or not v else "", shown) if p) or run
            ax.plot(g.index, g.to_numpy(), color=color, linestyle=LINESTYLES[j % len(LINESTYLES)],
                    marker=MARKERS[j % len(MARKERS)], markersize=3.5, linewidth=1.5, label=name)
    _references(ax, sub, colors)


def _line_figure(frame, study, name, colors, x=X, xlabel=None):
    sub = _study(frame, study, name)
    colors = colors_for(sub, colors, column=RUN)
    fig, axes = figure(1, 1, width=6.6, height=3.4)
    ax = axes[0, 0]
    _lines(ax, sub, colors, x=x)
    ax.set_xlabel(xlabel or _X_LABELS.get(study, "x"))
    ax.set_ylabel(_ylabel(sub))
    ax.set_title(_TITLES.get(study, study.replace("_", " ")))
    _outside_legend(ax)
    return fig


def _outside_legend(ax, extra=None) -> None:
    """Legend to the right of the axes, so it never hides a curve."""
    handles, labels = ax.get_legend_handles_labels()
    if extra is not None:
        h2, l2 = extra.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    seen = dict(zip(labels, handles))
    if seen:
        ax.legend(seen.values(), seen.keys(), loc="center left", bbox_to_anchor=(1.02 if extra is None else 1.16, 0.5),
                  fontsize=7)


def norm_scaling(frame: pd.DataFrame, *, colors: Mapping[str, str] | None = None):
    """Score of W₀ + α·ΔW_T against α (EffOPD Fig. 1a); against the global ‖α·ΔW‖_F when ``update_norm`` is given."""
    frame = validate_study(frame)
    if UPDATE_NORM in frame.columns and frame.loc[frame[STUDY] == "norm_scaling", UPDATE_NORM].notna().any():
        return _line_figure(frame, "norm_scaling", "norm_scaling", colors, x=UPDATE_NORM,
                            xlabel=r"global $\|\alpha\,\Delta W_T\|_F$")
    return _line_figure(frame, "norm_scaling", "norm_scaling", colors)


def spectral_partition(frame: pd.DataFrame, *, colors: Mapping[str, str] | None = None):
    """Score when each ΔW keeps only its top-k% / bottom-k% singular components (EffOPD Fig. 3); an absolute rank
    (variant ``top_rank_rescaled``, the ``authors`` preset) is labelled as a number of components."""
    variants = set(frame[frame[STUDY] == "spectral_partition"][VARIANT].astype(str))
    by_rank = variants & {"top_rank_rescaled"} and not variants & {"top", "bottom", "top_rescaled"}
    return _line_figure(frame, "spectral_partition", "spectral_partition", colors,
                        xlabel="singular components kept (number)" if by_rank else None)


def early_rescale(frame: pd.DataFrame, *, colors: Mapping[str, str] | None = None):
    """Score of early checkpoints whose updates are rescaled towards ‖ΔW_T‖_F, against β (EffOPD Fig. 4c)."""
    return _line_figure(frame, "early_rescale", "early_rescale", colors)


def effopd_accuracy(frame: pd.DataFrame, *, colors: Mapping[str, str] | None = None):
    """Score against training step: plain OPD and EffOPD, with accepted extrapolations marked (EffOPD §3)."""
    sub = _study(frame, "effopd", "effopd_accuracy")
    fig = _line_figure(frame, "effopd", "effopd_accuracy", colors)
    ax = fig.axes[0]
    colors = colors_for(sub, colors, column=RUN)
    acc = sub[sub[VARIANT] == "accepted"]
    for run, g in acc.groupby(RUN, observed=True):
        ax.scatter(g[X], g[VALUE], marker="*", s=70, color=colors[run], edgecolor="black", linewidth=0.5,
                   zorder=5, label="accepted extrapolation")
    if len(acc):
        _outside_legend(ax)
    return fig


def sliding_window(frame: pd.DataFrame, table: pd.DataFrame | None = None, *, run: str | None = None,
                   colors: Mapping[str, str] | None = None):
    """Score per window centre (MLP-only and attention-only restores) over bars of per-layer ‖ΔW‖_F.

    ``table`` is the analysis long table of the same run (its final-step ``frobenius`` rows give the bars:
    sqrt(Σ‖ΔW_m‖²) over the layer's MLP and attention matrices). One panel per run.
    """
    sub = _study(frame, "sliding_window", "sliding_window")
    runs = [run] if run else list(colors_for(sub, colors, column=RUN))
    if run and run not in set(sub[RUN]):
        raise PlotDataError(f"sliding_window: no run {run!r}", hint=f"choose one of {sorted(sub[RUN].unique())}")
    colors = colors_for(sub, colors, column=RUN)
    fig, axes = figure(len(runs), 1, width=7.6, height=2.9 * len(runs) + 0.5)
    for ax, r in zip(axes.flat, runs):
        bars_ax = None
        if table is not None and (table[LT_RUN] == r).any() and "frobenius" in set(table[LT_METRIC]):
            rows = body(table[(table[LT_RUN] == r) & (table[LT_METRIC] == "frobenius")])
            rows = rows[(rows[STEP] == rows[STEP].max()) & rows[LAYER].notna()]
            bars_ax = ax.twinx()
            layers = np.arange(int(rows[LAYER].min()), int(rows[LAYER].max()) + 1)
            for i, (fam, kinds) in enumerate((("mlp", MLP_KINDS), ("attention", ATTN_KINDS))):
                sq = rows[rows[KIND].isin(kinds)].assign(sq=lambda d: d[LT_VALUE] ** 2).groupby(LAYER)["sq"].sum()
                bars_ax.bar(layers + (i - 0.5) * 0.4, np.sqrt(sq.reindex(layers).to_numpy(dtype=float)), 0.38,
                            color=FAMILY_COLORS[fam], alpha=0.45, label=rf"$\|\Delta W\|_F$ {fam}")
            bars_ax.set_ylabel(r"layer $\|\Delta W\|_F$ (bars)")
            bars_ax.grid(False)
            bars_ax.spines["right"].set_visible(True)
            ax.set_zorder(bars_ax.get_zorder() + 1)
            ax.patch.set_visible(False)
        _lines(ax, sub[sub[RUN] == r], {r: colors[r]})
        ax.set_title(f"{r}: restoring W₀+ΔW inside a window of layers")
        ax.set_ylabel(_ylabel(sub) + " (lines)")
        ax.set_xlabel(_X_LABELS["sliding_window"])
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _outside_legend(ax, bars_ax)
    return fig


def study_bars(frame: pd.DataFrame, study: str, *, colors: Mapping[str, str] | None = None):
    """Any scalar study (embedding revert, early-subspace projection, …): one bar per (variant, run)."""
    sub = _study(frame, study, "study_bars")
    colors = colors_for(sub, colors, column=RUN)
    data = sub[~sub[VARIANT].str.startswith(REFERENCE_PREFIX)].groupby([VARIANT, RUN], observed=True, sort=False)[VALUE]
    data = data.mean().reset_index()
    fig, axes = figure(1, 1, width=max(4.0, 1.2 * data[VARIANT].nunique() + 2), height=3.2)
    ax = axes[0, 0]
    grouped_bars(ax, data, group=VARIANT, series=RUN, colors=colors, annotate=True)
    _references(ax, sub, colors)
    ax.set_ylabel(_ylabel(sub))
    ax.set_title(study.replace("_", " "))
    legend(ax, fontsize=7)
    return fig
