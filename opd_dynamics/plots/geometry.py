"""Where the update lands relative to W₀ (Path Not Taken arXiv 2511.08567; Geometry of OPD arXiv 2606.07082 App. C.3): principal angles and bf16 sparsity, by kind and run.

Input: the long table at each run's final step. Principal angles are read from the ``principal_angles``
metric's outputs ``principal_angle_<side>_<stat>`` (side ``left``/``right``, stat ``max``/``mean``, degrees;
``principal_angle_<stat>_<side>`` is accepted too);
sparsity from ``sparsity_bf16`` (fraction unchanged), weighted by ``sparsity_bf16_numel`` when present,
with the checkpoint's bits per value (``sparsity_bf16_bits``) written in the title.
"""
from __future__ import annotations

import re
from typing import Mapping

import pandas as pd

from ..table import BODY_KINDS, KIND, METRIC, MODULE, RUN, STEP, VALUE
from ._draw import grouped_bars
from ._style import PlotDataError, body, colors_for, figure, final_rows, legend, require

_ANGLE = re.compile(r"^principal_angles?_(?:(?P<s1>left|right)_(?P<t1>max|mean)|(?P<t2>max|mean)(?:_(?P<s2>left|right))?)$")
_BITS = {16: "bf16/fp16", 32: "fp32", 64: "fp64"}


def angle_metrics(df: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``{(stat, side): metric name}`` for the principal-angle rows in ``df``."""
    out = {}
    for m in df[METRIC].unique():
        hit = _ANGLE.match(str(m))
        if hit:
            out[(hit["t1"] or hit["t2"], hit["s1"] or hit["s2"] or "left")] = str(m)
    return out


def _by_kind(rows: pd.DataFrame, weights: pd.Series | None = None) -> pd.DataFrame:
    """Mean per (run, kind) plus an ``all`` group; weighted by ``weights`` (aligned on the index) if given."""
    rows = rows.assign(_w=1.0 if weights is None else weights.reindex(rows.index).fillna(0.0))
    rows = rows.assign(_wv=rows[VALUE] * rows["_w"])

    per_kind = rows.groupby([RUN, KIND], observed=True)[["_wv", "_w"]].sum()
    per_kind = (per_kind["_wv"] / per_kind["_w"]).rename(VALUE).reset_index()
    overall = rows.groupby(RUN, observed=True)[["_wv", "_w"]].sum()
    overall = (overall["_wv"] / overall["_w"]).rename(VALUE).reset_index().assign(**{KIND: "all"})
    return pd.concat([per_kind, overall], ignore_index=True)


def principal_angles_by_kind(df: pd.DataFrame, *, side: str = "left", floor: float = 1e-3,
                             colors: Mapping[str, str] | None = None):
    """Max and mean principal angle between the top-k singular subspaces of W₀ and W_T, by kind (degrees).

    Geometry of OPD headline: SFT > 10°, OPD ≈ 1°, RLVR < 0.5°. The y axis is logarithmic because the
    methods differ by orders of magnitude; it starts at ``floor`` degrees (default 1e-3°), so a module that
    did not move (float64 round-off, ~1e-13°) shows no bar. Bars: unweighted mean over the matrices of each kind.
    """
    found = angle_metrics(df)
    stats = [s for s in ("max", "mean") if (s, side) in found]
    if not stats:
        raise PlotDataError(f"principal_angles_by_kind: the table has no principal-angle rows for side={side!r}"
                            f" (found {sorted(found.values()) or 'none'})",
                            hint="analyze with --metrics principal_angles")
    rows = final_rows(body(df[df[METRIC].isin([found[(s, side)] for s in stats])]))
    colors = colors_for(rows, colors)
    kinds = [k for k in BODY_KINDS if k in set(rows[KIND])] + ["all"]
    fig, axes = figure(1, len(stats), width=4.3 * len(stats) + 0.6, height=3.2, sharey=True)
    for ax, stat in zip(axes.flat, stats):
        frame = _by_kind(rows[rows[METRIC] == found[(stat, side)]])
        grouped_bars(ax, frame, group=KIND, series=RUN, colors=colors, groups=kinds)
        ax.set_yscale("log")
        ax.set_title(f"{stat} angle, $W_0$ vs $W_T$, top-k {side} subspace")
        ax.set_xlabel("module kind")
        ax.tick_params(axis="x", rotation=30)
    top = rows[VALUE].max()  # the largest module ≥ every mean: no bar is clipped
    axes[0, 0].set_ylim(floor, max(top * 2, floor * 10) if pd.notna(top) else floor * 10)
    axes[0, 0].set_ylabel(f"angle (°, log scale from {floor:g}°)")
    legend(fig)
    return fig


def sparsity_by_kind(df: pd.DataFrame, *, colors: Mapping[str, str] | None = None):
    """Share of entries unchanged at bf16 resolution at the final step, by kind and run (PNT; Geometry of OPD).

    ``all`` is weighted by parameter count (``sparsity_bf16_numel``) as Geometry of OPD (arXiv 2606.07082 App. C.3) reports it; per-kind bars too.
    The checkpoint dtype goes in the title: an fp32 checkpoint gives very different figures.
    """
    require(df, ["sparsity_bf16"], "sparsity_by_kind")
    last = final_rows(df)
    rows = body(last[last[METRIC] == "sparsity_bf16"])
    numel = last[last[METRIC] == "sparsity_bf16_numel"].set_index([RUN, STEP, MODULE])[VALUE]
    weights = None
    if len(numel):
        key = pd.MultiIndex.from_frame(rows[[RUN, STEP, MODULE]])
        weights = pd.Series(numel.reindex(key).to_numpy(), index=rows.index)
    frame = _by_kind(rows, weights)
    frame[VALUE] = frame[VALUE] * 100
    colors = colors_for(rows, colors)
    kinds = [k for k in BODY_KINDS if k in set(rows[KIND])] + ["all"]
    fig, axes = figure(1, 1, width=min(0.55 * len(kinds) * max(len(colors), 1) + 2.5, 10), height=3.2)
    ax = axes[0, 0]
    grouped_bars(ax, frame, group=KIND, series=RUN, colors=colors, groups=kinds)
    ax.set_ylim(0, 100)
    ax.set_ylabel("entries unchanged in bf16 (%)")
    ax.set_xlabel("module kind")
    bits = last[last[METRIC] == "sparsity_bf16_bits"].groupby(RUN, observed=True)[VALUE].max()
    dtypes = ", ".join(f"{r}: {_BITS.get(int(b), f'{int(b)}-bit')}" for r, b in bits.items())
    ax.set_title("bf16-visible sparsity of the final update" + (f"\ncheckpoint dtype — {dtypes}" if dtypes else ""))
    legend(fig)
    return fig
