"""A noise-aware rank of ΔW: how many singular values stand above the update's noise floor.

The full-spectrum effective rank of a realistic update mostly measures noise (a rank-8 update of a 896×896
matrix plus dense noise at 1e-3 scores hundreds). Model ΔW = S + E, S low-rank, E noise with per-entry standard
deviation σ. The singular values of a pure-noise m×n matrix fill the Marchenko–Pastur bulk, whose top edge is
σ(√m + √n); a signal direction is visible only if its singular value clears that edge. Two estimates of σ:

- **Spectrum (MP)**: Gavish & Donoho (arXiv 1305.5870, §III.C, eq. (13)) estimate σ from the median singular value,
  σ̂ = y_med / √(n·μ_β), with n = max(m, n), β = min/max and μ_β the median of the Marchenko–Pastur law of ratio β.
  Robust to a few spikes (they move the median by about a position each).
- **bf16 rounding**: W₀ and W_t stored in bf16 carry a rounding error uniform in ±ulp/2 per entry (ulp = 2^(e−7)
  for |w| in [2^e, 2^(e+1))), so ΔW carries noise of variance (ulp(W_t)² + ulp(W_ref)²)/12 per entry whatever the
  training did; σ̂ = the root mean of that variance (the Frobenius size of the rounding noise / √(mn)). Computed
  from the weights' magnitudes, so it is the floor a bf16 copy of this checkpoint would have, even when the
  checkpoint is stored in float32 (then it says which directions would survive a bf16 cast).

Each σ̂ becomes an edge with a Tracy–Widom margin: λ_edge = σ̂²·(μ_mn + 2.02·s_mn), μ_mn = (√(m−½) + √(n−½))²,
s_mn = (√(m−½) + √(n−½))·(1/√(m−½) + 1/√(n−½))^{1/3} (Johnstone 2001, Ann. Stat. 29(2), Thm 1.1; 2.02 is
Tracy–Widom-1's 99 % quantile), i.e. ≈ σ̂(√m + √n) plus a few per cent for small matrices, so pure noise scores
signal_rank 0 in about 99 % of draws. The edge used is the larger of the two (``noise_edge``); each is a row.

Failure boundary (Baik–Ben Arous–Péché, Benaych-Georges & Nadakuditi arXiv 0910.2120, §3.1): a direction of
strength θ (a singular value of S) pushes a singular value out of the bulk only if θ > σ·(mn)^{1/4}; below that it
is invisible to any spectral method, above it its singular value is σ√n·√((1+x²)(β+x²))/x, x = θ/(σ√n). Tested:
with the σ̂ estimated from the spectrum itself, ranks 1–8 of 64×64 … 96×192 matrices are recovered exactly for
θ ≥ 2·σ(mn)^{1/4} and none is counted at θ ≤ 0.7·σ(mn)^{1/4} (tests/test_metrics_signal.py).

Reads the one shared spectrum of the view (all min(m, n) singular values): no second decomposition.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .registry import metric
from .spectrum import effective_rank_of

TW1_Q99 = 2.0234  # 99 % quantile of the Tracy–Widom (β = 1) law
BF16_MANTISSA = 7  # explicit mantissa bits of bfloat16


@lru_cache(maxsize=256)
def mp_median(beta: float) -> float:
    """Median of the Marchenko–Pastur law with ratio β ∈ (0, 1] and unit variance (density on [(1−√β)², (1+√β)²]).

    >>> round(mp_median(1.0), 4)  # Gavish & Donoho Table: μ_1 ≈ 0.6528
    0.6528
    """
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1], got {beta}")
    from scipy import integrate, optimize  # here, not at import: every analysis imports the metric modules

    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x):
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * beta * x)

    def cdf(x):
        return integrate.quad(density, lo, x, limit=200)[0]

    return float(optimize.brentq(lambda x: cdf(x) - 0.5, lo + 1e-12, hi, xtol=1e-12))


def mp_sigma(sigma_all: np.ndarray, shape: tuple[int, int]) -> float:
    """Per-entry noise σ̂ = y_med / √(n·μ_β) from all min(m, n) singular values (Gavish & Donoho eq. (13)).

    >>> z = np.random.default_rng(0).standard_normal((200, 400)) * 0.5
    >>> round(mp_sigma(np.linalg.svd(z, compute_uv=False), z.shape), 2)
    0.5
    """
    m, n = min(shape), max(shape)
    if m == 0 or sigma_all.size == 0:
        return math.nan
    return float(np.median(sigma_all) / math.sqrt(n * mp_median(m / n)))


def bulk_edge(noise_sigma: float, shape: tuple[int, int], quantile: float = TW1_Q99) -> float:
    """Top of the noise bulk with a Tracy–Widom margin: σ̂·√(μ_mn + q·s_mn) (Johnstone 2001), ≈ σ̂(√m + √n).

    >>> round(bulk_edge(1.0, (10**6, 10**6)) / 2000, 3)  # the margin vanishes for large matrices
    1.0
    """
    a, b = math.sqrt(shape[0] - 0.5), math.sqrt(shape[1] - 0.5)
    mu = (a + b) ** 2
    s = (a + b) * (1 / a + 1 / b) ** (1 / 3)
    return noise_sigma * math.sqrt(mu + quantile * s)


def bf16_ulp(w: torch.Tensor) -> torch.Tensor:
    """Spacing of bf16 values around each |w| (float32): 2^(e − 7) for |w| ∈ [2^e, 2^(e+1)); 0 at w = 0.

    >>> bf16_ulp(torch.tensor([1.0, 1.5, 2.0, 0.0])).tolist()
    [0.0078125, 0.0078125, 0.015625, 0.0]
    """
    _, exp = torch.frexp(w.to(torch.float32))  # |w| = mant·2^exp, mant ∈ [0.5, 1)
    return torch.where(w != 0, torch.ldexp(torch.ones_like(w, dtype=torch.float32), exp - 1 - BF16_MANTISSA),
                       torch.zeros((), dtype=torch.float32))


def bf16_sigma(w_ref: torch.Tensor, w_t: torch.Tensor) -> float:
    """RMS per-entry rounding noise of W_t − W_ref when both are stored in bf16: √(mean (ulp_t² + ulp_ref²)/12).

    >>> round(bf16_sigma(torch.ones(4, 4), torch.ones(4, 4)) * math.sqrt(6), 7)  # ulp 2⁻⁷ on both sides
    0.0078125
    """
    total = 0.0
    for w in (w_ref, w_t):
        total += float((bf16_ulp(w).to(torch.float64) ** 2).sum())
    return math.sqrt(total / 12 / max(w_ref.numel(), 1))


def signal_rank_of(sigma_all: np.ndarray, edge: float) -> tuple[int, float]:
    """(number of σ above ``edge``, effective rank of those σ alone; NaN when none).

    >>> signal_rank_of(np.array([5.0, 5.0, 0.1]), 1.0)
    (2, 2.0)
    """
    above = sigma_all[sigma_all > edge]
    return int(above.size), (effective_rank_of(above) if above.size else math.nan)


@metric("signal_rank", family="spectrum", bounds=(0, math.inf), label="",
        outputs=("signal_rank", "signal_effective_rank", "noise_edge", "noise_edge_mp", "noise_edge_bf16",
                 "noise_sigma_mp", "noise_sigma_bf16"),
        paper="beyond the papers: Gavish & Donoho arXiv 1305.5870 §III; BBP threshold arXiv 0910.2120 §3.1")
def signal_rank(floor: str = "max"):
    """σ of ΔW above its noise edge, the effective rank of those σ, and the edges (MP from the spectrum, bf16 rounding).

    ``floor``: ``max`` (default) uses the larger of the two edges, ``mp`` or ``bf16`` one of them. Every edge is
    written as its own row whatever is chosen (``noise_edge`` is the one used), with the per-entry σ̂ behind it.
    """
    if floor not in ("max", "mp", "bf16"):
        raise ValueError(f"floor must be 'max', 'mp' or 'bf16', got {floor!r}")

    def compute(view):
        sp = view.spectrum
        shape = sp.shape
        s_mp = mp_sigma(sp.sigma_all, shape)
        w_ref = view.before
        s_bf = bf16_sigma(w_ref, w_ref + view.delta)
        e_mp, e_bf = bulk_edge(s_mp, shape), bulk_edge(s_bf, shape)
        edge = {"max": float(np.nanmax([e_mp, e_bf])), "mp": e_mp, "bf16": e_bf}[floor]
        k, eff = signal_rank_of(sp.sigma_all, edge)
        return {"signal_rank": float(k), "signal_effective_rank": eff, "noise_edge": edge,
                "noise_edge_mp": e_mp, "noise_edge_bf16": e_bf, "noise_sigma_mp": s_mp, "noise_sigma_bf16": s_bf}

    return compute
