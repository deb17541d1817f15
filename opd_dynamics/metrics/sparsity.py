"""Which entries an update touches at bf16 resolution (PNT; Geometry of OPD App. C.3; Mukherjee et al. 2025).

An entry is *unchanged* when W_ref and W_t round to the same bf16 value: |ŵ − w| ≤ η·max(|w|, |ŵ|), η = 1e-3,
on both cast to bf16 and back. Distinct bf16 values differ by at least one ULP ≥ 2⁻⁸·max(|w|, |ŵ|) ≈ 3.9e-3 of the
larger, so with η = 1e-3 this is exactly "the two bf16 values are equal". Mukherjee et al. ("RL finetunes small
subnetworks", 2025) use an absolute tolerance instead, |ŵ − w| ≤ 1e-5: ``tolerance="absolute"``.

The mask of changed entries (M_upd) is computed once per (module, step) and shared with the principal-mask
overlaps in :mod:`.principal`. All of these need W_t exactly as stored (``needs_after``); the fraction depends
on the checkpoint dtype (an fp32 checkpoint changes many more entries than a bf16 one), so it is reported
beside every value. ``cast="stored"`` counts at the checkpoint's own precision instead: an entry is unchanged only
when its stored value is exactly equal (for an fp32 checkpoint, every update below bf16 resolution then counts as
a change). Cost: a few elementwise passes over the matrix, no decomposition.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    import pandas as pd

from .registry import Output, metric

ETA = 1e-3            # relative tolerance (PNT / Geometry of OPD)
ATOL_MUKHERJEE = 1e-5  # absolute tolerance (Mukherjee et al. 2025)
TOLERANCES = ("relative", "absolute")
Tolerance = Literal["relative", "absolute"]
CASTS = ("bf16", "stored")


def bf16_unchanged(w: torch.Tensor, w_hat: torch.Tensor, *, tolerance: str = "relative", eta: float = ETA,
                   atol: float = ATOL_MUKHERJEE) -> torch.Tensor:
    """Boolean mask of entries equal at bf16 resolution (both tensors cast to bf16 and back first).

    >>> w = torch.tensor([1.0, 1.0, 1.0])
    >>> bf16_unchanged(w, w + torch.tensor([0.0, 1e-3, 1e-2])).tolist()  # 1e-3 < half a bf16 ULP at 1.0
    [True, True, False]
    """
    if tolerance not in TOLERANCES:
        raise ValueError(f"tolerance must be one of {TOLERANCES}, got {tolerance!r}")
    a = w.to(torch.bfloat16).to(torch.float32)
    b = w_hat.to(torch.bfloat16).to(torch.float32)
    diff = (b - a).abs_()
    if tolerance == "absolute":
        return diff <= atol
    return diff <= torch.maximum(a.abs(), b.abs()).mul_(eta)


def changed_mask(view, tolerance: str = "relative", eta: float = ETA, atol: float = ATOL_MUKHERJEE,
                 cast: str = "bf16") -> torch.Tensor:
    """M_upd of a view: entries whose bf16 value differs between W_ref and W_t (cached per (module, step)).

    ``cast="stored"``: entries whose stored values differ at all (the checkpoint's own precision; no tolerance).
    """
    if cast == "stored":
        return view.cached_step("stored_changed", lambda: view.ref_raw.to(torch.float64) != view.after_raw.to(torch.float64))
    key = f"bf16_changed/{tolerance}/{eta}/{atol}"
    return view.cached_step(key, lambda: ~bf16_unchanged(view.ref_raw, view.after_raw, tolerance=tolerance,
                                                         eta=eta, atol=atol))


def _check(tolerance: str) -> None:
    if tolerance not in TOLERANCES:
        raise ValueError(f"tolerance must be one of {TOLERANCES}, got {tolerance!r}")


@metric("sparsity_bf16", family="sparsity", matrix=False, needs_after=True,
        outputs=(Output("sparsity_bf16", "entries unchanged in bf16 (%)", "%", (0, 1)),
                 Output("sparsity_bf16_numel", bounds=(0, math.inf)),
                 Output("sparsity_bf16_bits", bounds=(1, 64))),
        paper="PNT; Geometry of OPD App. C.3 (absolute: Mukherjee et al. 2025)")
def sparsity_bf16(tolerance: Tolerance = "relative", eta: float = ETA, atol: float = ATOL_MUKHERJEE,
                  cast: Literal["bf16", "stored"] = "bf16"):
    """Fraction of entries unchanged at bf16 resolution, with the entry count and the checkpoint's bits per value.

    ``tolerance="relative"``: |ŵ − w| ≤ eta·max(|w|, |ŵ|) (eta = 1e-3: bitwise-equal bf16). ``"absolute"``:
    |ŵ − w| ≤ atol = 1e-5, Mukherjee et al.'s definition. ``cast="stored"``: unchanged only if the stored values are
    equal (an fp32 checkpoint counted at fp32). The overall figure over a model is weighted by
    ``sparsity_bf16_numel``: see :func:`overall_sparsity`.
    """
    _check(tolerance)

    def compute(view):
        changed = changed_mask(view, tolerance, eta, atol, cast)
        n = changed.numel()
        frac = 1.0 - float(changed.sum()) / n if n else math.nan
        bits = float(view.after_raw.dtype.itemsize * 8)
        return {"sparsity_bf16": frac, "sparsity_bf16_numel": float(n), "sparsity_bf16_bits": bits}

    return compute


@metric("row_col_update_ratio", family="sparsity", needs_after=True,
        outputs=("row_update_ratio", "col_update_ratio"), bounds=(0, 1), paper="PNT (update sparsity structure)")
def row_col_update_ratio(tolerance: Tolerance = "relative", eta: float = ETA, atol: float = ATOL_MUKHERJEE):
    """Share of rows (output units) and of columns (input features) with at least one bf16-visible change."""
    _check(tolerance)

    def compute(view):
        changed = changed_mask(view, tolerance, eta, atol)
        return {"row_update_ratio": float(changed.any(dim=1).float().mean()),
                "col_update_ratio": float(changed.any(dim=0).float().mean())}

    return compute


def overall_sparsity(df: pd.DataFrame, by=("run", "step", "ref_step"), metric_name: str = "sparsity_bf16") -> pd.DataFrame:
    """Parameter-weighted overall sparsity from a long table: Σ sparsityᵢ·numelᵢ / Σ numelᵢ per group.

    >>> rows = [("r", 1, 0, m, 0, None, "mlp_up", k, v) for m, s, n in (("a", 1.0, 10), ("b", 0.0, 30))
    ...         for k, v in (("sparsity_bf16", s), ("sparsity_bf16_numel", n))]
    >>> from opd_dynamics.table import from_rows
    >>> overall_sparsity(from_rows(rows))["sparsity_bf16"].tolist()
    [0.25]
    """
    import pandas as pd  # a table helper: an analysis loads pandas only for its table

    by = list(by)
    key = by + ["module"]
    frac = df[df["metric"] == metric_name].set_index(key)["value"]
    numel = df[df["metric"] == f"{metric_name}_numel"].set_index(key)["value"]
    both = pd.DataFrame({"frac": frac, "numel": numel}).dropna()
    both["weighted"] = both["frac"] * both["numel"]
    g = both.groupby(level=by)[["weighted", "numel"]].sum()
    return (g["weighted"] / g["numel"]).rename(metric_name).reset_index()
