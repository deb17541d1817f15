"""EffOPD Table 1: per run and step, the unweighted mean over attention + MLP matrices of each metric.

What the table shows is what is informative:

- alignment to the final update and subspace locking are 1 at the final step by construction (the final update
  compared with itself): they are blank there, and left out of the final-step table;
- each similarity's chance level (``*_chance``) stands beside it;
- top-1 % (EffOPD Table 1) keeps ⌈0.01·r⌉ singular values: for every matrix with numerical rank r ≤ 100 that
  is one value, and the column is σ₁'s share again. :func:`informative` drops such a duplicate column and says so.

``aggregate="ratio_of_sums"`` (the ``authors`` preset) aggregates the two shares of ‖ΔW‖_F (σ₁/‖ΔW‖_F and
top-1 %) as the EffOPD release's ``upd_rank.py`` does: Σ‖ΔW_k‖_F / Σ‖ΔW‖_F over the modules, i.e. a mean weighted by
‖ΔW‖_F; every other column stays an unweighted mean.
"""
from __future__ import annotations

import pandas as pd

from .errors import OPDError
from .table import BODY_KINDS, KIND, METRIC, MODULE, RUN, STEP, VALUE

ORDER = ("spectral_norm", "spectral_ratio", "effective_rank", "top1pct_ratio", "stable_rank",
         "alignment_to_final", "alignment_to_final_chance", "subspace_locking", "subspace_locking_chance",
         "frobenius", "relative_update")
TO_FINAL = ("alignment_to_final", "alignment_to_final_chance", "subspace_locking", "subspace_locking_chance")
"""Columns that compare a step with the run's final step: 1 (or their chance level) there by construction."""


SHARES_OF_FROBENIUS = ("spectral_ratio", "top1pct_ratio")
"""Columns that are x/‖ΔW‖_F per module: ``aggregate="ratio_of_sums"`` weights them by ‖ΔW‖_F."""
AGGREGATES = ("mean", "ratio_of_sums")


def _to_final(column: str) -> bool:
    return column.split("[", 1)[0] in TO_FINAL


def _ratio_of_sums(body: pd.DataFrame, wide: pd.DataFrame) -> pd.DataFrame:
    """Replace the share-of-‖ΔW‖_F columns of ``wide`` by Σ(shareᵢ·‖ΔWᵢ‖_F) / Σ‖ΔWᵢ‖_F per (run, step)."""
    shares = [c for c in wide.columns if c.split("[", 1)[0] in SHARES_OF_FROBENIUS]
    if not shares:
        return wide
    frob = body[body[METRIC] == "frobenius"].set_index([RUN, STEP, MODULE])[VALUE]
    if frob.empty:
        raise OPDError("Table 1 as a ratio of sums needs the frobenius metric in the table",
                       hint="add -m frobenius to the analysis (it is in the default set)")
    wide = wide.copy()
    for c in shares:
        share = body[body[METRIC] == c].set_index([RUN, STEP, MODULE])[VALUE]
        both = pd.DataFrame({"share": share, "frob": frob}).dropna()
        both["num"] = both["share"] * both["frob"]
        g = both.groupby(level=[RUN, STEP])[["num", "frob"]].sum()
        wide[c] = (g["num"] / g["frob"]).reindex(wide.index)
    return wide


def table1(df: pd.DataFrame, *, final_only: bool = False, aggregate: str | None = None,
           preset: str | None = None) -> pd.DataFrame:
    """Wide table: one row per (run, step), one column per metric, unweighted mean over attn/MLP matrices.

    NaN values (zero updates) are left out of the means. Alignment / locking to the final step (and their chance
    levels) are blank at each run's final step and absent from the ``final_only`` table: there they are 1 by
    construction. ``aggregate``: ``"mean"`` (default, a mean of per-module ratios) or ``"ratio_of_sums"`` (the
    shares of ‖ΔW‖_F as Σ‖ΔW_k‖_F / Σ‖ΔW‖_F, the EffOPD release); default: ``preset``'s (docs/fidelity.md).
    """
    from .presets import resolve

    aggregate = resolve("table1", preset, aggregate=aggregate)["aggregate"]
    if aggregate not in AGGREGATES:
        raise OPDError(f"aggregate={aggregate!r} not understood", hint=f"use one of {', '.join(AGGREGATES)}")
    body = df[df[KIND].isin(BODY_KINDS)]
    last = body.groupby(RUN, observed=True)[STEP].transform("max")
    if final_only:
        body = body[body[STEP] == last]
    else:
        body = body.assign(**{VALUE: body[VALUE].where(~((body[STEP] == last) &
                                                          body[METRIC].astype(str).map(_to_final)))})
    wide = body.groupby([RUN, STEP, METRIC], observed=True)[VALUE].mean().unstack(METRIC)
    if aggregate == "ratio_of_sums":
        wide = _ratio_of_sums(body, wide)
    cols = [c for c in ORDER if c in wide.columns] + sorted(c for c in wide.columns if c not in ORDER
                                                             and c not in ("min_dim", "numerical_rank"))
    if final_only:
        cols = [c for c in cols if not _to_final(c)]
    return wide[cols].reset_index()


def informative(wide: pd.DataFrame, df: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """``wide`` without columns that repeat another one, and a note saying what was left out and why.

    top1pct_ratio equals spectral_ratio wherever ⌈0.01·r⌉ = 1 (every matrix of numerical rank r ≤ 100): then it
    is σ₁'s share again, not a second finding. ``df`` (the long table) lets the note state the largest rank.
    """
    notes = []
    if {"top1pct_ratio", "spectral_ratio"} <= set(wide.columns):
        a, b = wide["top1pct_ratio"], wide["spectral_ratio"]
        same = ((a - b).abs() <= 1e-6 * b.abs().clip(lower=1e-30)) | (a.isna() & b.isna())
        if len(wide) and bool(same.all()):
            wide = wide.drop(columns="top1pct_ratio")
            rank = ""
            if df is not None and "numerical_rank" in set(df[METRIC].astype(str)):
                r = df[(df[METRIC] == "numerical_rank") & df[KIND].isin(BODY_KINDS)][VALUE].max()
                rank = f" (largest numerical rank here: {int(r)})"
            notes.append("top-1 % is not shown: 1 % of every matrix's rank is a single singular value "
                         f"(⌈0.01·r⌉ = 1 for r ≤ 100, ⌊0.01·r⌋ = 1 for r < 200 under the authors preset{rank}), "
                         "so it equals spectral_ratio (σ₁'s share).")
    return wide, notes


def format_table(wide: pd.DataFrame, df: pd.DataFrame | None = None) -> str:
    """Plain-text rendering with percentages where the paper uses them (an output whose unit is "%"); duplicate columns
    left out with a note."""
    from .metrics.registry import output

    shown, notes = informative(wide, df)
    shown = shown.copy()
    for c in shown.columns:
        if c not in (RUN, STEP) and output(c).unit == "%":
            shown[c] = shown[c].map(lambda v: "—" if v != v else f"{100 * v:.1f}%")
        elif c not in (RUN, STEP):
            shown[c] = shown[c].map(lambda v: "—" if v != v else f"{v:.4g}")
    text = shown.to_string(index=False)
    return "\n".join([text] + [f"note: {n}" for n in notes])
