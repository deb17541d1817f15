"""EffOPD Table 1: per run and step, the unweighted mean over attention + MLP matrices of each metric."""
from __future__ import annotations

import pandas as pd

from .table import BODY_KINDS, KIND, METRIC, RUN, STEP, VALUE

ORDER = ("spectral_norm", "spectral_ratio", "effective_rank", "top1pct_ratio", "stable_rank",
         "alignment_to_final", "subspace_locking", "frobenius", "relative_update")
PERCENT = {"spectral_ratio", "top1pct_ratio", "alignment_to_final", "subspace_locking", "sparsity_bf16"}


def table1(df: pd.DataFrame, *, final_only: bool = False) -> pd.DataFrame:
    """Wide table: one row per (run, step), one column per metric, unweighted mean over attn/MLP matrices.

    NaN values (zero updates) are left out of the means.
    """
    body = df[df[KIND].isin(BODY_KINDS)]
    if final_only:
        last = body.groupby(RUN)[STEP].transform("max")
        body = body[body[STEP] == last]
    wide = body.groupby([RUN, STEP, METRIC], observed=True)[VALUE].mean().unstack(METRIC)
    cols = [c for c in ORDER if c in wide.columns] + sorted(c for c in wide.columns if c not in ORDER
                                                             and c not in ("min_dim", "numerical_rank"))
    return wide[cols].reset_index()


def format_table(wide: pd.DataFrame) -> str:
    """Plain-text rendering with percentages where the paper uses them."""
    shown = wide.copy()
    for c in shown.columns:
        if c in PERCENT:
            shown[c] = shown[c].map(lambda v: "—" if v != v else f"{100 * v:.1f}%")
        elif c not in (RUN, STEP):
            shown[c] = shown[c].map(lambda v: "—" if v != v else f"{v:.4g}")
    return shown.to_string(index=False)
