"""Shared look of every figure: the Okabe–Ito palette, fixed run colours; axis labels and units come from each
metric's declared outputs (:class:`opd_dynamics.metrics.registry.Output`).

matplotlib is imported inside functions only, so ``import opd_dynamics.plots`` stays cheap and the
library never pulls plotting in at import time.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import pandas as pd

from ..errors import OPDError
from ..table import BODY_KINDS, KIND, METRIC, RUN, STEP, VALUE

# Okabe & Ito (2008), "Color Universal Design": distinguishable under the common colour-vision deficiencies.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky": "#56B4E9", "green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "purple": "#CC79A7"}
# The same training method keeps its colour in every figure and report.
KNOWN_RUNS = {"opd": "#0072B2", "rl": "#D55E00", "grpo": "#D55E00", "sft": "#009E73", "effopd": "#CC79A7",
              "teacher": "#000000", "base": "#777777"}
_SPARE = ("#E69F00", "#56B4E9", "#CC79A7", "#009E73", "#D55E00", "#0072B2", "#000000", "#F0E442")
FAMILY_COLORS = {"attention": "#56B4E9", "mlp": "#E69F00"}
LINESTYLES = ("-", "--", "-.", ":")
# reference lines (x = NaN rows of a study frame): style and grey level say which reference
REFERENCE_STYLES = {"base": (":", "#777777"), "final": ("--", "#333333"), "teacher": ("-.", "#000000")}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")

STEP_LABEL = "training step"
PROGRESS_LABEL = "training progress t / T (%)"


class PlotDataError(OPDError):
    """The table handed to a figure lacks what the figure draws (a metric, a study, a column)."""


def pyplot():
    """``matplotlib.pyplot`` with the house rcParams, imported on first use."""
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.dpi": 100, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
        "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
        "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
        "legend.frameon": False, "pdf.fonttype": 42, "svg.fonttype": "none"})
    return plt


def figure(nrows: int = 1, ncols: int = 1, *, width: float | None = None, height: float | None = None, **kw):
    """New figure with constrained layout (so labels are never clipped) and an array of axes."""
    plt = pyplot()
    width = width or min(3.4 * ncols + 0.6, 14)
    height = height or 2.8 * nrows + 0.4
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained", squeeze=False, **kw)
    return fig, axes


def run_colors(runs: Iterable[str], colors: Mapping[str, str] | None = None) -> dict[str, str]:
    """Colour per run: given ``colors`` first, then the method's fixed colour, then spare Okabe–Ito colours.

    >>> run_colors(["sft", "opd", "mine"])
    {'sft': '#009E73', 'opd': '#0072B2', 'mine': '#E69F00'}
    """
    out = dict(colors or {})
    names = list(dict.fromkeys(str(r) for r in runs))
    for r in names:
        if r not in out and r.lower() in KNOWN_RUNS:
            out[r] = KNOWN_RUNS[r.lower()]
    spare = [c for c in _SPARE if c not in out.values()] or list(_SPARE)
    for i, r in enumerate(r for r in names if r not in out):
        out[r] = spare[i % len(spare)]
    return {r: out[r] for r in names}


def colors_for(df: pd.DataFrame, colors: Mapping[str, str] | None = None, column: str = RUN) -> dict[str, str]:
    """Colours for the runs present in ``df``: in the order of ``colors`` (a report's shared palette), then sorted."""
    present = set(df[column].dropna().astype(str).unique())
    order = [r for r in (colors or {}) if r in present] + sorted(present - set(colors or {}))
    return run_colors(order, colors)


def label(metric: str) -> str:
    """Axis label for a metric's output row, with its unit: the label its ``@metric`` declares."""
    from ..metrics.registry import output

    return output(metric).axis_label


def scale(metric: str) -> float:
    """Factor that turns a stored value into the displayed unit (100 for percentages), from the metric's facts."""
    from ..metrics.registry import output

    return output(metric).scale


def require(df: pd.DataFrame, metrics: Iterable[str], figure_name: str) -> None:
    """Raise :class:`PlotDataError` naming the missing metrics and how to compute them."""
    have = set(df[METRIC].unique()) if METRIC in df.columns else set()
    missing = [m for m in metrics if m not in have]
    if missing:
        raise PlotDataError(f"{figure_name}: the table has no {', '.join(missing)} rows",
                            hint=f"analyze with --metrics {','.join(sorted({_family(m) for m in missing}))}")


def _family(metric: str) -> str:
    if metric.startswith("principal_angle"):
        return "principal_angles"
    if metric.startswith("rank1_pca_evr"):
        return "rank1_pca_evr"
    return metric


def body(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of attention and MLP matrices only, with finite values (the modules Table 1 averages)."""
    return df[df[KIND].isin(BODY_KINDS) & df[VALUE].notna()]


def final_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Each run's rows at its last step."""
    last = df.groupby(RUN, observed=True)[STEP].transform("max")
    return df[df[STEP] == last]


def legend(ax_or_fig, *, loc: str = "best", outside: bool = False, **kw) -> None:
    """Legend without duplicate labels; ``outside`` puts it below a figure."""
    import matplotlib.figure

    if isinstance(ax_or_fig, matplotlib.figure.Figure):
        handles, labels = [], []
        for ax in ax_or_fig.axes:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels and not lab.startswith("_"):
                    handles.append(h)
                    labels.append(lab)
        if handles:
            ax_or_fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 8), **kw)
        return
    handles, labels = ax_or_fig.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    if seen:
        ax_or_fig.legend(seen.values(), seen.keys(), loc=loc, **kw)
