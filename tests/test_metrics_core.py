"""Core update-geometry metrics (EffOPD arXiv 2605.11739 App. B, Table 1, Fig. 4b; Geometry of OPD arXiv 2606.07082 App. E) against float64 numpy oracles and planted structures."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from opd_dynamics.linalg import EPS32
from opd_dynamics.metrics.registry import DEFAULT_METRICS, Spec, available, get
from opd_dynamics.errors import SelectionError
from helpers import compute, low_rank_plus_noise, trajectory, view_of


def oracle_sigma(d: np.ndarray) -> np.ndarray:
    s = np.linalg.svd(d.astype(np.float64), compute_uv=False)
    r = int(np.count_nonzero(s > s[0] * max(d.shape) * EPS32))
    return s[:r]


def oracles(d: np.ndarray, w0: np.ndarray) -> dict[str, float]:
    s = oracle_sigma(d)
    p = s / s.sum()
    k = math.ceil(s.size / 100)
    fro = np.sqrt((d.astype(np.float64) ** 2).sum())
    return {
        "frobenius": fro,
        "relative_update": fro / np.linalg.norm(w0.astype(np.float64)),
        "spectral_norm": s[0],
        "spectral_ratio": s[0] / fro,
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "top1pct_ratio": float(np.sqrt((s[:k] ** 2).sum() / (s ** 2).sum())),
        "stable_rank": fro ** 2 / s[0] ** 2,
    }


SHAPES = [(64, 48), (48, 64), (300, 40), (40, 300), (257, 257)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("method", ["gram", "svd", "svd64"])
def test_metrics_match_float64_oracle_on_random_updates(shape, method):
    rng = np.random.default_rng(sum(shape))
    w0 = rng.standard_normal(shape).astype(np.float32)
    d = low_rank_plus_noise(*shape, rank=6, noise=0.3, seed=shape[0]).astype(np.float32)
    wt = w0 + d
    delta = (torch.from_numpy(wt) - torch.from_numpy(w0)).double().numpy()  # the float32 difference, exactly
    want = oracles(delta, w0)
    view = view_of(w0, wt, method=method)
    tol = 1e-9 if method != "svd" else 2e-5  # float32 svdvals: ~ε₃₂ relative
    for name, expected in want.items():
        got = Spec(name).build()(view)
        got = got[name] if isinstance(got, dict) else got
        assert got == pytest.approx(expected, rel=tol, abs=1e-12), (name, method)
    er = Spec("effective_rank").build()(view)
    assert er["min_dim"] == min(shape)
    assert er["numerical_rank"] == oracle_sigma(delta).size


def test_one_decomposition_feeds_every_spectral_metric():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((40, 30)).astype(np.float32)
    view = view_of(w0, w0 + 0.1 * rng.standard_normal((40, 30)).astype(np.float32))
    for name in ("spectral_norm", "spectral_ratio", "effective_rank", "top1pct_ratio", "stable_rank", "hill_alpha"):
        Spec(name).build()(view)
    assert view.spectrum.decompositions == 1


def _rank2_equal(m=50, n=40, scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, 2)))[0]
    v = np.linalg.qr(rng.standard_normal((n, 2)))[0]
    return scale * u @ v.T


def test_planted_rank2_equal_singular_values():
    d = _rank2_equal()
    w0 = np.zeros_like(d, dtype=np.float32) + 1.0
    got = {n: compute(n, w0, w0 + d.astype(np.float32)) for n in ("effective_rank", "top1pct_ratio", "spectral_ratio",
                                                                    "stable_rank", "spectral_norm")}
    assert got["effective_rank"]["effective_rank"] == pytest.approx(2.0, abs=1e-5)
    assert got["effective_rank"]["numerical_rank"] == 2
    assert got["top1pct_ratio"] == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert got["spectral_ratio"] == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert got["stable_rank"] == pytest.approx(2.0, abs=1e-5)
    assert got["spectral_norm"] == pytest.approx(3.0, abs=1e-5)


def test_planted_rank1_and_zero_update():
    rng = np.random.default_rng(1)
    w0 = rng.standard_normal((30, 20)).astype(np.float32)
    d = np.outer(rng.standard_normal(30), rng.standard_normal(20)).astype(np.float32)
    assert compute("spectral_ratio", w0, w0 + d) == pytest.approx(1.0, abs=1e-6)
    assert compute("effective_rank", w0, w0 + d)["effective_rank"] == pytest.approx(1.0, abs=1e-6)
    zero = compute("effective_rank", w0, w0.copy())
    assert math.isnan(zero["effective_rank"]) and zero["numerical_rank"] == 0
    assert math.isnan(compute("spectral_ratio", w0, w0.copy()))
    assert compute("frobenius", w0, w0.copy()) == 0.0


def test_hill_alpha_matches_formula_and_caps_k():
    rng = np.random.default_rng(2)
    w0 = np.zeros((60, 50), np.float32)
    d = rng.standard_normal((60, 50)).astype(np.float32)
    s = oracle_sigma(d.astype(np.float64))
    k = 32
    want = 1.0 / (np.log(s[: k - 1] / s[k - 1]).sum() / (k - 1))
    assert compute("hill_alpha", w0, d) == pytest.approx(want, rel=1e-8)
    # power-law planted spectrum σᵢ = i^(-1/a): the estimator recovers a
    a = 2.0
    u = np.linalg.qr(rng.standard_normal((200, 200)))[0]
    sig = np.arange(1, 201) ** (-1 / a)
    planted = (u * sig) @ np.linalg.qr(rng.standard_normal((200, 200)))[0].T
    est = compute("hill_alpha", np.zeros((200, 200), np.float32), planted.astype(np.float32), k=100)
    assert est == pytest.approx(a, rel=0.25)


def _steps_keeping_direction(m=40, n=30, steps=(1, 2, 4, 8), seed=3):
    rng = np.random.default_rng(seed)
    base = low_rank_plus_noise(m, n, rank=5, noise=0.0, seed=seed, decay=0.6)
    w0 = rng.standard_normal((m, n)).astype(np.float32)
    return w0, {s: (w0 + (s / 8) * base).astype(np.float32) for s in steps}, base


@pytest.mark.parametrize("mode", ["paired", "subspace"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_alignment_is_one_when_direction_is_kept(mode, side):
    w0, steps, _ = _steps_keeping_direction()
    got = trajectory("alignment_to_final", w0, steps, k=5, side=side, mode=mode)
    assert set(got) == set(steps)
    for v in got.values():
        assert v == pytest.approx(1.0, abs=1e-4)


def test_alignment_matches_numpy_oracle_on_rotating_updates():
    rng = np.random.default_rng(4)
    m, n, k = 50, 35, 6
    w0 = rng.standard_normal((m, n)).astype(np.float32)
    a = low_rank_plus_noise(m, n, 8, 0.05, seed=5)
    b = low_rank_plus_noise(m, n, 8, 0.05, seed=6)
    steps = {s: (w0 + ((1 - s / 4) * a + (s / 4) * b)).astype(np.float32) for s in (1, 2, 3, 4)}
    got_p = trajectory("alignment_to_final", w0, steps, k=k, mode="paired")  # the old default, explicit
    got_s = trajectory("alignment_to_final", w0, steps, k=k, mode="subspace", side="right")
    final_d = (torch.from_numpy(steps[4]) - torch.from_numpy(w0)).double().numpy()
    uT, _, vTh = np.linalg.svd(final_d)
    for s, wt in steps.items():
        d = (torch.from_numpy(wt) - torch.from_numpy(w0)).double().numpy()
        u, _, vh = np.linalg.svd(d)
        paired = np.abs((u[:, :k] * uT[:, :k]).sum(0)).mean()
        sub = ((vh[:k] @ vTh[:k].T) ** 2).sum() / k
        assert got_p[s] == pytest.approx(paired, abs=1e-6)
        assert got_s[s] == pytest.approx(sub, abs=1e-6)
    assert got_p[1] < 0.9  # the rotation is visible


def test_subspace_locking_and_rank1_pca():
    w0, steps, _ = _steps_keeping_direction()
    lock = trajectory("subspace_locking", w0, steps)
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in lock.values())
    # u₁ that moves less than the Gram path's vector accuracy (~1e-7) has no direction of motion: EVR is reported NaN
    # rather than the PCA of rounding noise. Planted on W₀ = 0 with power-of-two step scales (every float32 ΔW_t is
    # exactly (t/8)·ΔW_8) and one entry of ΔW_1 nudged by one float32 ulp, which moves u₁ by ~1e-9, not zero. (With a
    # random W₀ the float32 checkpoints themselves move u₁ by ~1e-6: real, measurable motion.)
    _, _, base = _steps_keeping_direction()
    steps = {s: ((s / 8) * base).astype(np.float32) for s in (1, 2, 4, 8)}
    steps[1][0, 0] = np.nextafter(steps[1][0, 0], np.float32(np.inf))
    evr = trajectory("rank1_pca_evr", np.zeros_like(steps[1]), steps)
    (last, vals), = evr.items()
    assert last == 8
    assert math.isnan(vals["rank1_pca_evr1"]) and math.isnan(vals["rank1_pca_evr2"])


def test_rank1_pca_evr_of_three_steps_spans_one_plane():
    """Planted: three u₁ positions, centred, lie in a plane, so EVR1 + EVR2 = 1 exactly; one point far from the other
    two puts most of the variance on the first component."""
    rng = np.random.default_rng(11)
    m, n = 24, 18
    q = np.linalg.qr(rng.standard_normal((m, 3)))[0]
    v = np.linalg.qr(rng.standard_normal((n, 1)))[0][:, 0]
    us = [q[:, 0], (q[:, 0] + 0.05 * q[:, 1]) / np.linalg.norm(q[:, 0] + 0.05 * q[:, 1]), q[:, 2]]
    steps = {s + 1: (2 * np.outer(us[s], v)).astype(np.float32) for s in range(3)}
    got = trajectory("rank1_pca_evr", np.zeros((m, n), np.float32), steps)[3]
    assert got["rank1_pca_evr1"] + got["rank1_pca_evr2"] == pytest.approx(1.0, abs=1e-9)
    assert 0.9 < got["rank1_pca_evr1"] < 1.0


def test_rank1_pca_evr_matches_numpy_on_a_drifting_trajectory():
    rng = np.random.default_rng(7)
    m, n = 30, 20
    w0 = np.zeros((m, n), np.float32)
    us = [np.linalg.qr(rng.standard_normal((m, 1)))[0][:, 0] for _ in range(5)]
    vs = np.linalg.qr(rng.standard_normal((n, 1)))[0][:, 0]
    steps = {s + 1: (3 * np.outer(us[s], vs)).astype(np.float32) for s in range(5)}
    got = trajectory("rank1_pca_evr", w0, steps)[5]
    rows, prev = [], None
    for s in range(5):
        u = np.linalg.svd(steps[s + 1].astype(np.float64))[0][:, 0]
        if prev is not None and u @ prev < 0:
            u = -u
        rows.append(u)
        prev = u
    x = np.array(rows) - np.mean(rows, axis=0)
    ev = np.linalg.svd(x, compute_uv=False) ** 2
    assert got["rank1_pca_evr1"] == pytest.approx(ev[0] / ev.sum(), abs=1e-6)
    assert got["rank1_pca_evr2"] == pytest.approx(ev[1] / ev.sum(), abs=1e-6)


def test_registry_lists_defaults_and_suggests_names():
    names = available()
    assert set(DEFAULT_METRICS) <= set(names)
    for info in names.values():
        assert info.summary, f"{info.name} needs a one-line docstring"
    with pytest.raises(SelectionError, match="did you mean spectral_ratio"):
        get("spectral_ratoi")
    with pytest.raises(SelectionError, match="does not take settings"):
        Spec("spectral_norm", {"k": 3}).build()
    with pytest.raises(SelectionError, match="mode='diagonal': expected one of 'paired', 'subspace'"):
        Spec("alignment_to_final", {"mode": "diagonal"}).build()  # the user's mistake, not a ValueError traceback
    with pytest.raises(SelectionError, match="expected an integer"):
        Spec.parse("alignment_to_final:k=20;mode=subspace")  # checked when parsed


def test_spec_roundtrip_and_parse():
    s = Spec.parse("alignment_to_final:k=10,side=right,mode=subspace")
    assert s.args == {"k": 10, "side": "right", "mode": "subspace"}
    assert Spec.from_json(s.to_json()) == s
    with pytest.raises(SelectionError):
        Spec.parse("alignment_to_final:k10")


def test_bf16_inputs_are_upcast_before_subtracting():
    rng = np.random.default_rng(8)
    w0 = torch.from_numpy(rng.standard_normal((20, 10)).astype(np.float32)).to(torch.bfloat16)
    wt = torch.from_numpy(rng.standard_normal((20, 10)).astype(np.float32))  # fp32 checkpoint vs bf16 base
    want = np.linalg.norm(wt.double().numpy() - w0.double().numpy())
    assert compute("frobenius", w0, wt) == pytest.approx(want, rel=1e-6)


def test_every_update_norm_is_the_one_frobenius():
    """‖ΔW‖_F: the frobenius metric, relative_update's numerator, the factored (LoRA) path, the spectral ratios'
    denominator and the edits all agree with a float64 oracle (one definition, linalg.frobenius / σ of the spectrum)."""
    from opd_dynamics.edits import norm_rescale
    from opd_dynamics.linalg import Factored
    from opd_dynamics.naming import Part
    from opd_dynamics.view import ModuleView

    rng = np.random.default_rng(7)
    w0 = rng.standard_normal((24, 16)).astype(np.float32)
    b, a = rng.standard_normal((24, 3)), rng.standard_normal((3, 16))
    wt = (w0 + 0.1 * b @ a).astype(np.float32)
    delta64 = (wt - w0).astype(np.float64)  # ΔW as the engine forms it: a float32 difference, then float64 sums
    oracle = float(np.linalg.norm(delta64))
    view = view_of(w0, wt)
    assert compute("frobenius", w0, wt) == pytest.approx(oracle, rel=1e-12)
    assert view.spectrum.frobenius == pytest.approx(oracle, rel=1e-10)
    assert compute("relative_update", w0, wt) == pytest.approx(oracle / np.linalg.norm(w0.astype(np.float64)), rel=1e-12)
    assert compute("stable_rank", w0, wt) == pytest.approx(oracle ** 2 / np.linalg.svd(delta64, compute_uv=False)[0] ** 2,
                                                            rel=1e-9)
    # the factored (LoRA) path: σ of the factors, ΔW never formed
    fac = Factored(torch.tensor(b, dtype=torch.float32), torch.tensor(a, dtype=torch.float32), 0.1)
    part = Part("m", "m", 0, "mlp_up")
    fview = ModuleView("run", part, 1, 0, fac, torch.tensor(w0), None, "gram", {})
    f_oracle = float(np.linalg.norm(0.1 * fac.b.double().numpy() @ fac.a.double().numpy()))
    assert fview.delta_norm == pytest.approx(f_oracle, rel=1e-10) and "delta" not in fview.__dict__
    # the edits' norm rescale reaches the target ‖·‖_F exactly (float64)
    d = torch.tensor(delta64)
    assert float(torch.linalg.vector_norm(norm_rescale(d, 2 * oracle))) == pytest.approx(2 * oracle, rel=1e-14)
