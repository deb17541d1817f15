"""Small tables for the figure and report tests (the ``long_table`` and ``studies`` fixtures of ``conftest.py``): a
real analysis of the synthetic runs, plus a study frame.

Principal-angle rows are planted by hand (values in degrees, OPD ≈ 1°, RL ≈ 0.3°, SFT ≈ 12°) so the figure shows
a known ordering; the study frame holds illustrative scores, not results. Every name in ``METRICS`` must be a
registered metric: removing one fails these tests (``analyze`` refuses an unknown name) instead of skipping them.
"""
from __future__ import annotations

import math

import pandas as pd

from opd_dynamics.frames import from_records
from opd_dynamics.table import from_rows

METRICS = ["frobenius", "relative_update", "spectral_norm", "spectral_ratio", "effective_rank", "top1pct_ratio",
           "stable_rank", "alignment_to_final", "subspace_locking", "rank1_pca_evr", "sparsity_bf16"]


def with_sft_and_angles(df: pd.DataFrame) -> pd.DataFrame:
    """Add an ``sft`` run (a scaled copy of ``opd``) and principal-angle rows for every matrix."""
    sft = df[df["run"] == "opd"].copy()
    sft["run"] = "sft"
    sft["value"] = sft["value"] * 0.9
    df = pd.concat([df, sft], ignore_index=True)
    keys = df[df["kind"] != "norm"][["run", "step", "module", "layer", "kind"]].drop_duplicates()
    level = {"opd": 1.0, "rl": 0.3, "sft": 12.0}
    rows = [(r.run, r.step, 0, r.module, r.layer, None, r.kind, f"principal_angle_{side}_{stat}",
             level[r.run] * f * (1 + 0.1 * math.sin(i)))
            for i, r in enumerate(keys.itertuples(index=False)) for stat, f in (("max", 1.0), ("mean", 0.3))
            for side in ("left", "right")]
    return from_rows(list(df.astype(object).itertuples(index=False, name=None)) + rows)


def study_frame() -> pd.DataFrame:
    rows = []
    for run, s in (("opd", 1.0), ("rl", 0.8)):
        rows += [("sliding_window", run, v, c, "accuracy", s * (0.3 + 0.1 * c if v == "mlp" else 0.2 + 0.05 * c))
                 for v in ("mlp", "attn") for c in range(2)]
        rows += [("sliding_window", run, "reference:base", math.nan, "accuracy", 0.2),
                 ("sliding_window", run, "reference:final", math.nan, "accuracy", 0.7 * s)]
        rows += [("norm_scaling", run, "", a / 4, "accuracy", s * (0.2 + 0.5 * (a / 4) ** 0.5)) for a in range(5)]
        rows += [("spectral_partition", run, v, k, "accuracy", s * (0.2 + 0.5 * min(1, k / 10)))
                 for v in ("top", "bottom", "top_rescaled") for k in (1, 10, 50, 100)]
        rows += [("early_rescale", run, ck, b / 4, "accuracy", s * (0.3 + 0.3 * b / 4))
                 for ck in ("step 2 (25%)", "step 4 (50%)") for b in range(5)]
        rows += [("embedding_revert", run, v, math.nan, "accuracy", s * f) for v, f in (("final", .7), ("reverted", .68))]
    rows += [("effopd", "opd", v, t, "accuracy", 0.7 * (1 - math.exp(-t / k)))
             for v, k in (("opd", 12), ("effopd", 4)) for t in range(0, 17, 2)]
    rows += [("effopd", "opd", "accepted", t, "accuracy", 0.7 * (1 - math.exp(-t / 4))) for t in (2, 4, 8)]
    rows += [("effopd", "opd", "reference:teacher", math.nan, "accuracy", 0.8)]
    return from_records(rows)


def analysed(synthetic_runs) -> pd.DataFrame:
    """Long table of the synthetic opd + rl runs (2 layers, steps 1–8), plus an sft run and principal angles."""
    from opd_dynamics import analyze

    df = analyze([synthetic_runs["opd"], synthetic_runs["rl"]], base=synthetic_runs["base"], metrics=METRICS,
                 progress=False, device="cpu")
    missing = [m for m in METRICS if not any(out.startswith(m) for out in set(df.metric))]
    assert not missing, f"no rows for {missing}"  # every metric the figures read produced its rows
    return with_sft_and_angles(df)
