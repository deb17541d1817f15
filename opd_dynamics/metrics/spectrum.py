"""Spectral shape of one update ΔW (EffOPD App. B; Geometry of OPD App. E).

All read the one shared spectrum of the view (σ₁ ≥ … ≥ σ_r, r the numerical rank), so selecting all of them
costs one decomposition. A zero update has no shape: ratios come back NaN.
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np

from .registry import Output, metric


def effective_rank_of(sigma: np.ndarray) -> float:
    """exp(−Σ pᵢ ln pᵢ) with pᵢ = σᵢ / Σσⱼ (Roy & Vetterli 2007; σ, not σ², normalised).

    >>> round(effective_rank_of(np.array([2.0, 2.0])), 12)
    2.0
    """
    total = sigma.sum()
    if total <= 0:
        return math.nan
    p = sigma[sigma > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


ROUNDINGS = ("ceil", "floor")


def top_count(r: int, fraction: float = 0.01, rounding: str = "ceil") -> int:
    """How many singular values "the top ``fraction``" of r keeps: ⌈fraction·r⌉ (``ceil``, the paper's "top 1 %"
    read as at least 1 % of the spectrum) or ⌊fraction·r⌋ (``floor``, an integer rank as the authors' scripts
    take it), at least 1 either way.

    >>> top_count(150), top_count(150, rounding="floor"), top_count(99, rounding="floor")
    (2, 1, 1)
    """
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    x = r * fraction
    return max(1, math.ceil(x - 1e-12) if rounding == "ceil" else math.floor(x + 1e-12))


def top_fraction_ratio(sigma: np.ndarray, fraction: float = 0.01, rounding: str = "ceil") -> float:
    """sqrt(Σ_{i≤k} σᵢ² / Σⱼ σⱼ²) with k = ⌈fraction·r⌉ (``rounding="floor"``: ⌊fraction·r⌋, at least 1).

    >>> round(top_fraction_ratio(np.array([1.0, 1.0])), 6)  # k = 1 of r = 2
    0.707107
    """
    r = sigma.size
    if r == 0:
        return math.nan
    k = top_count(r, fraction, rounding)
    sq = sigma.astype(np.float64) ** 2
    return float(np.sqrt(sq[:k].sum() / sq.sum()))


HILL_ON = ("sigma", "lambda")


def hill_alpha_of(sigma: np.ndarray, k: int = 32, on: str = "sigma") -> float:
    """Hill tail index over the top-k σ: [ (1/(k−1)) Σ_{i<k} ln(σᵢ/σ_k) ]⁻¹ (k capped at r; NaN if r < 2).

    ``on="lambda"`` is WeightWatcher's convention: the power-law *density* exponent of the eigenvalues λ = σ² of
    ΔWᵀΔW, α_λ = 1 + [ (1/(k−1)) Σ_{i<k} ln(λᵢ/λ_k) ]⁻¹ = 1 + α_σ/2 (a tail P(λ > x) ∝ x^(−a) has density
    exponent 1 + a, and ln λ = 2 ln σ halves the tail index).

    >>> round(hill_alpha_of(np.array([np.e, 1.0]), k=2), 12), round(hill_alpha_of(np.array([np.e, 1.0]), k=2, on="lambda"), 12)
    (1.0, 1.5)
    """
    if on not in HILL_ON:
        raise ValueError(f"on must be one of {HILL_ON}, got {on!r}")
    k = min(k, sigma.size)
    if k < 2:
        return math.nan
    s = sigma[:k].astype(np.float64)
    if on == "lambda":
        s = s ** 2
    mean_log = np.log(s[:-1] / s[-1]).sum() / (k - 1)
    tail = float(1.0 / mean_log) if mean_log > 0 else math.inf
    return 1.0 + tail if on == "lambda" else tail


@metric("spectral_norm", family="spectrum", bounds=(0, math.inf), label=r"spectral norm $\sigma_1(\Delta W)$",
        paper="EffOPD Table 1")
def spectral_norm():
    """σ₁(ΔW): the largest singular value of the update."""
    return lambda view: float(view.spectrum.sigma_all[0]) if view.spectrum.sigma_all.size else 0.0


@metric("spectral_ratio", family="spectrum", bounds=(0, 1), label=r"$\sigma_1 / \|\Delta W\|_F$ (%)", unit="%",
        paper="EffOPD Table 1")
def spectral_ratio():
    """σ₁ / ‖ΔW‖_F: how much of the update one direction carries."""

    def compute(view):
        f = view.spectrum.frobenius
        return float(view.spectrum.sigma_all[0]) / f if f > 0 else math.nan

    return compute


@metric("effective_rank", family="spectrum", paper="EffOPD Table 1",
        outputs=(Output("effective_rank", "effective rank", bounds=(1, math.inf)),
                 Output("numerical_rank", bounds=(0, math.inf)),  # 0 for a zero update
                 Output("min_dim", bounds=(1, math.inf))))
def effective_rank():
    """exp(entropy of σ/Σσ) over σ₁..σ_r, with the numerical rank r and min(m, n) beside it."""

    def compute(view):
        sp = view.spectrum
        return {"effective_rank": effective_rank_of(sp.sigma), "numerical_rank": float(sp.rank),
                "min_dim": float(min(sp.shape))}

    return compute


@metric("top1pct_ratio", family="spectrum", bounds=(0, 1), label="top-1% energy ratio (%)", unit="%",
        paper="EffOPD Table 1")
def top1pct_ratio(fraction: float = 0.01, rounding: Literal["ceil", "floor"] = "ceil"):
    """sqrt(energy share of the top ⌈fraction·r⌉ singular values); fraction = 1 % as in the paper.

    ``rounding="floor"`` keeps ⌊fraction·r⌋ (at least 1), the ``authors`` preset (docs/fidelity.md).
    """
    top_count(1, fraction, rounding)  # a bad setting fails when the metric is built
    return lambda view: top_fraction_ratio(view.spectrum.sigma, fraction, rounding)


@metric("stable_rank", family="spectrum", bounds=(1, math.inf), label=r"stable rank $\|\Delta W\|_F^2/\sigma_1^2$",
        paper="Geometry of OPD App. E")
def stable_rank():
    """‖ΔW‖_F² / σ₁²."""

    def compute(view):
        s1 = float(view.spectrum.sigma_all[0]) if view.spectrum.sigma_all.size else 0.0
        return view.spectrum.frobenius ** 2 / s1 ** 2 if s1 > 0 else math.nan

    return compute


@metric("hill_alpha", family="spectrum", bounds=(0, math.inf), label=r"Hill $\alpha$", paper="Geometry of OPD App. E")
def hill_alpha(k: int = 32, on: Literal["sigma", "lambda"] = "sigma"):
    """Hill estimate of the power-law tail index of ΔW's top-k singular values.

    ``on="lambda"``: WeightWatcher's density exponent of λ = σ², 1 + α_σ/2 (the ``authors`` preset; docs/fidelity.md).
    """
    hill_alpha_of(np.ones(2), 2, on)  # a bad setting fails when the metric is built
    return lambda view: hill_alpha_of(view.spectrum.sigma, k, on)
