"""Drawing helpers shared by the figure families: grouped bars and mean-with-band lines."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..table import RUN, STEP, VALUE
from ._style import MARKERS, PROGRESS_LABEL, STEP_LABEL


def grouped_bars(ax, frame: pd.DataFrame, *, group: str, series: str, colors: Mapping[str, str],
                 groups: Sequence | None = None, err: str | None = None, annotate: bool = False,
                 fmt: str = "{:.3g}") -> None:
    """Bars of ``frame[VALUE]``: one cluster per ``group`` value, one bar (coloured) per ``series`` value."""
    groups = list(groups) if groups is not None else list(dict.fromkeys(frame[group]))
    names = [s for s in colors if s in set(frame[series])]
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        sub = frame[frame[series] == name].set_index(group).reindex(groups)
        vals = sub[VALUE].to_numpy(dtype=float)
        yerr = sub[err].to_numpy(dtype=float) if err and err in sub else None
        bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, vals, width * 0.92, yerr=yerr, label=str(name),
                      color=colors[name], edgecolor="white", linewidth=0.5,
                      error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#333333"})
        if annotate:
            ax.bar_label(bars, labels=["" if np.isnan(v) else fmt.format(v) for v in vals], fontsize=7, padding=1)
    ax.set_xticks(x, [str(g) for g in groups])
    ax.grid(axis="x", visible=False)
    if annotate:
        ax.margins(y=0.15)


def progress_of(df: pd.DataFrame) -> pd.Series:
    """Step as a percentage of each run's last step."""
    last = df.groupby(RUN, observed=True)[STEP].transform("max").astype(float)
    return 100.0 * df[STEP].astype(float) / last.where(last > 0, 1.0)


def mean_lines(ax, df: pd.DataFrame, *, colors: Mapping[str, str], factor: float = 1.0, x: str = "step",
               band: bool = True) -> None:
    """Per run: the mean over modules against step (or progress), with the interquartile range shaded."""
    df = df.assign(_x=progress_of(df) if x == "progress" else df[STEP].astype(float))
    for i, (name, color) in enumerate(colors.items()):
        sub = df[df[RUN] == name]
        if sub.empty:
            continue
        g = sub.groupby("_x")[VALUE]
        mean = g.mean() * factor
        ax.plot(mean.index, mean.to_numpy(), color=color, marker=MARKERS[i % len(MARKERS)], markersize=3.5,
                linewidth=1.6, label=str(name))
        if band and g.size().max() > 1:
            ax.fill_between(mean.index, g.quantile(0.25) * factor, g.quantile(0.75) * factor, color=color,
                            alpha=0.18, linewidth=0)
    ax.set_xlabel(PROGRESS_LABEL if x == "progress" else STEP_LABEL)
