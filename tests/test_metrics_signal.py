"""signal_rank: the noise-aware rank (opd_dynamics/metrics/noise_floor.py) against float64 oracles and planted
low-rank + Gaussian noise of known rank and noise level, on both sides of the BBP threshold θ = σ·(mn)^{1/4}."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from opd_dynamics.metrics.noise_floor import bf16_sigma, bf16_ulp, bulk_edge, mp_median, mp_sigma
from opd_dynamics.metrics.spectrum import effective_rank_of
from helpers import compute, view_of

SHAPES = [(64, 64), (64, 128), (128, 64), (96, 192)]
RANKS = [1, 2, 4, 8]
SEEDS = range(5)
SIGMA = 1e-2


def planted(shape, rank, c, seed, sigma=SIGMA, strengths=None):
    """θ·U Vᵀ (rank ``rank``, θ = c·σ·(mn)^{1/4}: c = 1 is the BBP threshold) plus i.i.d. N(0, σ²) noise."""
    m, n = shape
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, rank)))[0]
    v = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    theta = c * sigma * (m * n) ** 0.25 * (np.ones(rank) if strengths is None else np.asarray(strengths))
    return (u * theta) @ v.T + sigma * rng.standard_normal((m, n))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", RANKS)
def test_rank_recovered_exactly_at_three_times_the_bbp_threshold(shape, rank):
    for c in (3.0, 10.0):
        got = [compute("signal_rank", np.zeros(shape), planted(shape, rank, c, s))["signal_rank"] for s in SEEDS]
        assert got == [rank] * len(SEEDS), (c, got)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("rank", RANKS)
def test_below_the_bbp_threshold_the_planted_directions_are_invisible(shape, rank):
    # below θ = σ(mn)^{1/4} no spectral method sees the spike; what remains is the ~3 % chance that the top noise
    # value clears the Tracy–Widom margin (measured on 300 pure-noise draws per shape)
    for c in (0.5, 0.7):
        got = [compute("signal_rank", np.zeros(shape), planted(shape, rank, c, s))["signal_rank"] for s in SEEDS]
        assert max(got) <= 1 and sum(got) <= 1, (c, got)


def test_noise_level_is_estimated_from_the_spectrum():
    for shape in SHAPES:
        for sigma in (1e-4, 1e-2, 1.0):
            out = compute("signal_rank", np.zeros(shape), planted(shape, 4, 5.0, 0, sigma=sigma))
            assert out["noise_sigma_mp"] == pytest.approx(sigma, rel=0.08)
            assert out["noise_edge_mp"] == pytest.approx(bulk_edge(out["noise_sigma_mp"], shape), rel=1e-12)
            assert out["noise_edge_mp"] / (sigma * (math.sqrt(shape[0]) + math.sqrt(shape[1]))) == pytest.approx(1.05, abs=0.1)


def test_effective_rank_counts_noise_while_signal_rank_does_not():
    # the example at a size this machine runs in a test: rank 8 plus dense noise
    d = planted((256, 256), 8, 6.0, 0, strengths=0.7 ** np.arange(8) * 3)
    out = compute("signal_rank", np.zeros(d.shape), d)
    full = compute("effective_rank", np.zeros(d.shape), d)["effective_rank"]
    assert out["signal_rank"] == 8 and full > 100
    assert 1 < out["signal_effective_rank"] < 8


def signal_oracle(w0: np.ndarray, wt: np.ndarray) -> dict[str, float]:
    """Every signal_rank row in float64 numpy: SVD of the float32 ΔW the engine forms, the MP median by quadrature,
    the bf16 floor from the ulp formula written out."""
    shape = w0.shape
    d32 = (wt.astype(np.float32) - w0.astype(np.float32)).astype(np.float64)
    s = np.linalg.svd(d32, compute_uv=False)
    m, n = min(shape), max(shape)
    s_mp = np.median(s) / np.sqrt(n * mp_median(m / n))
    ulp = lambda w: np.where(w != 0, 2.0 ** (np.floor(np.log2(np.abs(np.where(w != 0, w, 1.0)))) - 7), 0.0)  # noqa: E731
    w_t32 = (w0.astype(np.float32) + d32.astype(np.float32)).astype(np.float64)
    s_bf = np.sqrt(((ulp(w0.astype(np.float32).astype(np.float64)) ** 2 + ulp(w_t32) ** 2) / 12).mean())
    a, b = np.sqrt(shape[0] - 0.5), np.sqrt(shape[1] - 0.5)
    edge = lambda sg: sg * np.sqrt((a + b) ** 2 + 2.0234 * (a + b) * (1 / a + 1 / b) ** (1 / 3))  # noqa: E731
    e = max(edge(s_mp), edge(s_bf))
    above = s[s > e]
    p = above / above.sum()
    return {"signal_rank": float(above.size), "signal_effective_rank": float(np.exp(-(p * np.log(p)).sum())),
            "noise_edge": e, "noise_edge_mp": edge(s_mp), "noise_edge_bf16": edge(s_bf),
            "noise_sigma_mp": s_mp, "noise_sigma_bf16": s_bf}


def test_matches_float64_numpy_oracle():
    rng = np.random.default_rng(3)
    for shape in [(40, 70), (70, 40), (64, 64)]:
        w0 = rng.standard_normal(shape)
        wt = w0 + planted(shape, 3, 4.0, 7, strengths=[3, 2, 1])
        out = compute("signal_rank", w0, wt)
        want = signal_oracle(w0, wt)
        assert want["signal_rank"] == 3
        for key, value in want.items():
            assert out[key] == pytest.approx(value, rel=1e-6), key


def test_mp_median_matches_monte_carlo():
    rng = np.random.default_rng(0)
    for beta in (1.0, 0.5, 0.25):
        n = 2000
        z = rng.standard_normal((int(beta * n), n))
        lam = np.linalg.eigvalsh(z @ z.T / n)
        assert mp_median(beta) == pytest.approx(np.median(lam), rel=0.01)
    with pytest.raises(ValueError):
        mp_median(1.5)


def test_bf16_floor_matches_actual_rounding():
    rng = np.random.default_rng(1)
    w0 = torch.tensor(rng.standard_normal((128, 96)) * 0.05, dtype=torch.float32)
    wt = w0 + torch.tensor(rng.standard_normal((128, 96)) * 1e-3, dtype=torch.float32)
    err = (wt.bfloat16().float() - wt) - (w0.bfloat16().float() - w0)
    measured = float(err.double().pow(2).mean().sqrt())
    assert bf16_sigma(w0, wt) == pytest.approx(measured, rel=0.03)
    # the ulp is the gap between neighbouring bf16 values
    x = torch.tensor([0.3, -7.0, 1e-3])
    nxt = torch.nextafter(x.bfloat16(), torch.tensor(float("inf")).bfloat16()).float() - x.bfloat16().float()
    assert bf16_ulp(x.bfloat16().float()).tolist() == nxt.abs().tolist()


def test_bf16_floor_hides_directions_the_mp_edge_shows():
    # fp32 weights of size ~1 with a rank-2 update well above the (tiny) Gaussian noise but below the rounding
    # floor a bf16 copy would have: the spectrum alone finds 2, the default (max of both edges) finds none
    rng = np.random.default_rng(2)
    shape = (64, 96)
    w0 = rng.standard_normal(shape)
    d = planted(shape, 2, 5.0, 0, sigma=1e-5)
    out = compute("signal_rank", w0, w0 + d)
    assert out["noise_edge_bf16"] > out["noise_edge_mp"]
    assert out["noise_edge"] == out["noise_edge_bf16"] and out["signal_rank"] == 0
    assert compute("signal_rank", w0, w0 + d, floor="mp")["signal_rank"] == 2
    assert compute("signal_rank", w0, w0 + d, floor="bf16")["noise_edge"] == out["noise_edge_bf16"]


def test_reuses_the_shared_spectrum():
    d = planted((64, 80), 2, 5.0, 0)
    view = view_of(np.zeros(d.shape), d)
    from opd_dynamics.metrics.registry import Spec
    for name in ("effective_rank", "signal_rank", "spectral_norm"):
        Spec(name).build()(view)
    assert view.spectrum.decompositions == 1


def test_zero_update_and_bad_setting():
    out = compute("signal_rank", np.ones((8, 8)), np.ones((8, 8)))
    assert out["signal_rank"] == 0 and math.isnan(out["signal_effective_rank"])
    with pytest.raises(ValueError, match="floor"):
        compute("signal_rank", np.ones((8, 8)), np.ones((8, 8)), floor="median")
