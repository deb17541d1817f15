"""hill_alpha, subspace_locking, alignment_to_final and rank1_pca_evr against float64 numpy oracles (exact SVD) and
planted trajectories."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tests.helpers import compute, low_rank_plus_noise, rank1_pca_evr_oracle, trajectory

M, N = 60, 40


def _svd(x):
    u, s, vh = np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False)
    return u, s, vh.T


def _steps(seed=0, n_steps=4, drift=0.3):
    """ΔW_t = t·(fixed low-rank part + a drifting part): a trajectory whose subspace moves a little."""
    rng = np.random.default_rng(seed)
    base = low_rank_plus_noise(M, N, rank=20, noise=1e-3, seed=seed, decay=0.8)
    w0 = rng.standard_normal((M, N))
    out = {}
    for t in range(1, n_steps + 1):
        d = t * base + drift * t * low_rank_plus_noise(M, N, rank=20, noise=1e-3, seed=100 + t, decay=0.8)
        out[t] = w0 + d
    return w0, out


def test_hill_alpha_against_oracle():
    w0 = np.zeros((M, N))
    wt = low_rank_plus_noise(M, N, rank=30, noise=1e-2, seed=1, decay=0.9)
    s = _svd(np.float32(wt))[1]
    for k in (2, 8, 32):
        expect = 1 / np.mean(np.log(s[: k - 1] / s[k - 1]))
        assert compute("hill_alpha", w0, wt, k=k) == pytest.approx(expect, rel=1e-6)
    # a power law σᵢ = i^(−1/a) has tail index a for the Hill estimator's log-spacings in expectation; here exact
    # on its own definition: planted σ = e^{−i/k} gives 1/mean(ln σᵢ/σ_k)
    assert math.isnan(compute("hill_alpha", w0, np.outer(np.ones(M), np.ones(N)), k=8))  # rank 1: undefined


@pytest.mark.parametrize("k", [4, 16])
def test_subspace_locking_against_exact_svd(k):
    w0, steps = _steps()
    got = trajectory("subspace_locking", w0, steps, k=k)
    d_final = np.float32(steps[max(steps)]) - np.float32(w0)
    v_final = _svd(d_final)[2][:, :k]
    for t, wt in steps.items():
        v_t = _svd(np.float32(wt) - np.float32(w0))[2][:, :k]
        expect = np.linalg.norm(v_t.T @ v_final) ** 2 / k
        assert got[t] == pytest.approx(expect, abs=1e-6)
    assert got[max(steps)] == pytest.approx(1.0, abs=1e-9)


def test_update_that_keeps_its_direction_is_locked():
    w0 = np.random.default_rng(2).standard_normal((M, N))
    d = low_rank_plus_noise(M, N, rank=16, noise=0.0, seed=3, decay=0.8)
    steps = {t: w0 + 0.1 * t * d for t in (1, 2, 4, 8)}
    for t, v in trajectory("subspace_locking", w0, steps).items():
        assert v == pytest.approx(1.0, abs=1e-6)
    for t, v in trajectory("alignment_to_final", w0, steps).items():
        assert v == pytest.approx(1.0, abs=1e-6)
    # scaling by powers of two is exact: u₁ does not move at all, so there is no direction of motion to explain
    exact = {t: t * np.float32(d) for t in (1, 2, 4, 8)}
    evr = trajectory("rank1_pca_evr", np.zeros((M, N), np.float32), exact)[8]
    assert math.isnan(evr["rank1_pca_evr1"]) and math.isnan(evr["rank1_pca_evr2"])


def test_rotating_update_unlocks():
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal((M, N))
    q_u = np.linalg.qr(rng.standard_normal((M, M)))[0]
    q_v = np.linalg.qr(rng.standard_normal((N, N)))[0]
    steps = {}
    for t in (1, 2, 3):
        cols = slice(8 * (t - 1), 8 * (t - 1) + 16)          # the right subspace slides by 8 of 16 each step
        steps[t] = w0 + (q_u[:, :16] * 0.9 ** np.arange(16)) @ q_v[:, cols].T
    got = trajectory("subspace_locking", w0, steps, k=16)
    assert got[1] == pytest.approx(0.0, abs=1e-6) and got[2] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("mode", ["paired", "subspace"])
def test_alignment_to_final_options_against_oracle(side, mode):
    w0, steps = _steps(seed=5, drift=0.2)
    k = 5
    got = trajectory("alignment_to_final", w0, steps, k=k, side=side, mode=mode)
    pick = 0 if side == "left" else 2
    final = _svd(np.float32(steps[max(steps)]) - np.float32(w0))[pick][:, :k]
    for t, wt in steps.items():
        vec = _svd(np.float32(wt) - np.float32(w0))[pick][:, :k]
        if mode == "paired":
            expect = np.abs((vec * final).sum(axis=0)).mean()
        else:
            expect = np.linalg.norm(vec.T @ final) ** 2 / k
        assert got[t] == pytest.approx(expect, abs=1e-6)


def test_rank1_pca_evr_against_oracle():
    w0, steps = _steps(seed=6, n_steps=6, drift=0.5)
    got = trajectory("rank1_pca_evr", w0, steps)[6]
    want = rank1_pca_evr_oracle(lambda wt, base: _svd(np.float32(wt) - np.float32(base))[0][:, 0], w0, steps)
    assert got["rank1_pca_evr1"] == pytest.approx(want["rank1_pca_evr1"], abs=1e-6)
    assert got["rank1_pca_evr2"] == pytest.approx(want["rank1_pca_evr2"], abs=1e-6)


def test_alignment_to_final_defaults_to_subspace_and_paired_stays_an_option():
    w0, steps = _steps(seed=7, drift=0.2)
    default = trajectory("alignment_to_final", w0, steps)
    explicit = trajectory("alignment_to_final", w0, steps, mode="subspace")
    paired = trajectory("alignment_to_final", w0, steps, mode="paired")
    assert default == explicit and default != paired
    from opd_dynamics.metrics.registry import get
    assert get("alignment_to_final").defaults["mode"] == "subspace"


def test_paired_chance_closed_form_against_monte_carlo():
    from opd_dynamics.metrics.direction import paired_chance
    rng = np.random.default_rng(0)
    for d in (2, 3, 8, 64, 896):
        a = rng.standard_normal((20000, d))
        b = rng.standard_normal((20000, d))
        cos = np.abs((a * b).sum(1)) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert paired_chance(d) == pytest.approx(cos.mean(), abs=4 * cos.std() / np.sqrt(len(cos)))
    assert paired_chance(10_000) == pytest.approx(np.sqrt(2 / (np.pi * 10_000)), rel=1e-4)


@pytest.mark.parametrize("mode", ["paired", "subspace"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_alignment_chance_rows_match_random_subspaces(mode, side):
    """The ``_chance`` row is what unrelated updates score: a trajectory of independent random updates sits at it."""
    from opd_dynamics.metrics.direction import paired_chance
    k, m, n = 6, 48, 32
    rng = np.random.default_rng(11)
    w0 = rng.standard_normal((m, n))
    got, chance = [], None
    for rep in range(40):
        steps = {t: w0 + rng.standard_normal((m, n)) for t in (1, 2)}
        out = trajectory("alignment_to_final", w0, steps, rows=True, k=k, mode=mode, side=side)
        got.append(out[1]["alignment_to_final"])
        chance = out[1]["alignment_to_final_chance"]
        assert out[2]["alignment_to_final"] == pytest.approx(1.0, abs=1e-6)
    d = m if side == "left" else n
    expect = k / d if mode == "subspace" else paired_chance(d)
    assert chance == pytest.approx(expect, abs=1e-12)
    assert np.mean(got) == pytest.approx(expect, abs=4 * np.std(got) / np.sqrt(len(got)) + 0.01)


def test_subspace_locking_reports_its_chance():
    w0, steps = _steps()
    out = trajectory("subspace_locking", w0, steps, rows=True, k=4)
    assert all(v["subspace_locking_chance"] == pytest.approx(4 / N) for v in out.values())
