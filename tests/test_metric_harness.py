"""One harness over EVERY registered metric: run it the way the engine does on one random bf16 trajectory, and hold
each output row to the bounds its ``@metric`` declares and to a float64 numpy/scipy oracle.

A metric without an oracle here fails (add one to ``ORACLES``: the settings to run it with and a function of the
stored float64 weights); so does an output it declares but does not emit, or emits but does not declare.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from opd_dynamics.metrics.registry import Spec, available
from tests.helpers import low_rank_plus_noise, rank1_pca_evr_oracle, view_of
from tests.test_metrics_core import oracles as core_oracles
from tests.test_metrics_core import oracle_sigma
from tests.test_metrics_embedding import embedding_oracle
from tests.test_metrics_geometry import _oracle_unchanged, _svd
from tests.test_metrics_signal import signal_oracle

M, N, STEPS = 60, 40, (1, 2, 3, 4)
CHANGED_ROWS = 40  # the update touches rows 0..39 only: sparsity, row and column ratios are not trivially 0 or 1


def _trajectory(seed: int = 0):
    """W₀ and {t: W_t}, stored in bf16: ΔW_t = t·(planted rank-20 part + a drifting part) on the first 40 rows."""
    rng = np.random.default_rng(seed)
    w0 = torch.tensor(0.02 * rng.standard_normal((M, N)), dtype=torch.bfloat16)
    base = low_rank_plus_noise(CHANGED_ROWS, N, rank=20, noise=1e-3, seed=seed, decay=0.8)
    steps = {}
    for t in STEPS:
        d = np.zeros((M, N))
        d[:CHANGED_ROWS] = 0.05 * t * (base + 0.3 * low_rank_plus_noise(CHANGED_ROWS, N, rank=20, noise=1e-3,
                                                                           seed=100 + t, decay=0.8))
        steps[t] = (w0.double() + torch.tensor(d)).to(torch.bfloat16)
    return w0, steps


def _f64(x) -> np.ndarray:
    return torch.as_tensor(x).double().numpy()


# -- float64 oracles: (w0, {t: W_t}) -> {t: {output: value}} ---------------------------------------------------------
def _per_step(fn):
    return lambda w0, steps: {t: fn(_f64(w0), _f64(wt)) for t, wt in steps.items()}


def _core(w0, wt):
    d = wt - w0
    s = oracle_sigma(d)
    out = core_oracles(d, w0)
    out.update(numerical_rank=float(s.size), min_dim=float(min(d.shape)))
    k = min(32, s.size)
    out["hill_alpha"] = 1 / np.mean(np.log(s[: k - 1] / s[k - 1]))
    return out


def _top(d, k, side):
    u, s, v = _svd(d)
    return (u if side == "left" else v)[:, :k]


def _to_final(name, k, side):
    def oracle(w0, steps):
        last = max(steps)
        final = _top(_f64(steps[last]) - _f64(w0), k, side)
        return {t: {name: np.linalg.norm(_top(_f64(wt) - _f64(w0), k, side).T @ final) ** 2 / k,
                    name + "_chance": k / final.shape[0]} for t, wt in steps.items()}

    return oracle


def _rank1_pca(w0, steps):
    top = lambda wt, base: _top(_f64(wt) - _f64(base), 1, "left")[:, 0]  # noqa: E731
    return {max(steps): rank1_pca_evr_oracle(top, w0, steps)}


def _angles(k):
    def oracle(w0, wt):
        (u0, _, v0), (ut, _, vt) = _svd(w0), _svd(wt)
        out = {}
        for side, a, b in (("left", u0, ut), ("right", v0, vt)):
            theta = np.degrees(scipy.linalg.subspace_angles(a[:, :k], b[:, :k]))
            out[f"principal_angle_{side}_max"], out[f"principal_angle_{side}_mean"] = theta.max(), theta.mean()
        return out

    return oracle


def _spectral_shift(w0, wt):
    s0, st = _svd(w0)[1], _svd(wt)[1]
    return {"spectral_shift": np.linalg.norm(st - s0) / np.linalg.norm(s0)}


def _top_fraction(x, alpha, largest):
    n = math.ceil(alpha * x.size)
    flat = np.sort(x.ravel())
    return x >= flat[-n] if largest else x <= flat[n - 1]


def _principal_mask(k, alpha):
    def oracle(w0, wt):
        upd = ~_oracle_unchanged(w0, wt)
        u, s, v = _svd(w0)
        princ = _top_fraction(np.abs((u[:, :k] * s[:k]) @ v[:, :k].T), alpha, largest=True)
        return {"principal_mask_overlap": (princ & upd).sum() / upd.sum(), "principal_mask_overlap_chance": princ.mean()}

    return oracle


def _low_magnitude(w0, wt):
    upd = ~_oracle_unchanged(w0, wt)
    low = _top_fraction(np.abs(w0), 0.5, largest=False)
    return {"low_magnitude_overlap": (low & upd).sum() / upd.sum(), "low_magnitude_overlap_chance": low.mean()}


def _sparsity(w0, wt):
    unchanged = _oracle_unchanged(w0, wt)
    return {"sparsity_bf16": unchanged.mean(), "sparsity_bf16_numel": float(w0.size), "sparsity_bf16_bits": 16.0,
            "row_update_ratio": (~unchanged).any(axis=1).mean(), "col_update_ratio": (~unchanged).any(axis=0).mean()}


def _pick(fn, *names):
    return lambda w0, wt: {k: v for k, v in fn(w0, wt).items() if k in names}


# metric -> (settings it runs with, oracle). Settings other than the defaults only where the defaults leave an output
# NaN by definition on a 60×40 matrix (principal_angles' k = 512 covers the whole right space).
ORACLES = {
    "frobenius": ({}, _per_step(_pick(_core, "frobenius"))),
    "relative_update": ({}, _per_step(_pick(_core, "relative_update"))),
    "spectral_norm": ({}, _per_step(_pick(_core, "spectral_norm"))),
    "spectral_ratio": ({}, _per_step(_pick(_core, "spectral_ratio"))),
    "effective_rank": ({}, _per_step(_pick(_core, "effective_rank", "numerical_rank", "min_dim"))),
    "top1pct_ratio": ({}, _per_step(_pick(_core, "top1pct_ratio"))),
    "stable_rank": ({}, _per_step(_pick(_core, "stable_rank"))),
    "hill_alpha": ({}, _per_step(_pick(_core, "hill_alpha"))),
    "alignment_to_final": ({}, _to_final("alignment_to_final", 20, "left")),
    "subspace_locking": ({}, _to_final("subspace_locking", 16, "right")),
    "rank1_pca_evr": ({}, _rank1_pca),
    "principal_angles": ({"k": 8}, _per_step(_angles(8))),
    "spectral_shift": ({}, _per_step(_spectral_shift)),
    "principal_mask_overlap": ({}, _per_step(_principal_mask(64, 0.5))),
    "low_magnitude_overlap": ({}, _per_step(_low_magnitude)),
    "sparsity_bf16": ({}, _per_step(_pick(_sparsity, "sparsity_bf16", "sparsity_bf16_numel", "sparsity_bf16_bits"))),
    "row_col_update_ratio": ({}, _per_step(_pick(_sparsity, "row_update_ratio", "col_update_ratio"))),
    "signal_rank": ({}, _per_step(signal_oracle)),
    "embedding_shift": ({"kinds": "*"}, _per_step(embedding_oracle)),  # rows of any matrix as "tokens"
}


def run_metric(name: str, args: dict, w0, steps) -> dict[int, dict[str, float]]:
    """{step: {output: value}} as the engine produces it (one view per step, trajectory metrics finalised)."""
    info = available()[name]
    m = Spec(name, args).build()
    cache: dict = {}
    views = {t: view_of(w0, wt, step=t, cache=cache) for t, wt in steps.items()}
    if info.trajectory:
        raw = m.finalize({t: m.collect(v) for t, v in views.items()})
    else:
        raw = {t: m(v) for t, v in views.items()}
    return {t: v if isinstance(v, dict) else {info.outputs[0]: v} for t, v in raw.items()}


@pytest.fixture(scope="module")
def inputs():
    return _trajectory()


def test_every_registered_metric_has_an_oracle():
    missing = sorted(set(available()) - set(ORACLES))
    assert not missing, f"metrics without an oracle in tests/test_metric_harness.py ORACLES: {missing}"


@pytest.mark.parametrize("name", sorted(available()))
def test_metric_against_its_bounds_and_float64_oracle(name, inputs):
    if name not in ORACLES:
        pytest.fail(f"{name}: add its oracle to ORACLES")
    info = available()[name]
    args, oracle = ORACLES[name]
    w0, steps = inputs
    got, want = run_metric(name, args, w0, steps), oracle(w0, steps)
    assert sorted(got) == sorted(want), name
    bounds = {o.name: o.bounds for o in info.columns}
    for t, values in got.items():
        assert set(values) == set(bounds) == set(want[t]), (name, t, sorted(values), sorted(bounds))
        for out, value in values.items():
            lo, hi = bounds[out]
            assert math.isfinite(value), (name, out, t, value)  # every oracle value here is finite
            slack = 1e-12 * max(1.0, abs(value))  # rounding: a similarity of 1 may come out as 1 + 2e-16·k
            assert lo - slack <= value <= hi + slack, f"{out} = {value} at step {t} outside its declared bounds {bounds[out]}"
            assert value == pytest.approx(float(want[t][out]), rel=1e-6, abs=1e-6), (name, out, t)


def test_the_inputs_exercise_every_output():
    """The trajectory is not degenerate: partial sparsity, rows and columns, and a moving top direction."""
    w0, steps = _trajectory()
    s = _sparsity(_f64(w0), _f64(steps[1]))
    assert 0.2 < s["sparsity_bf16"] < 0.5 and s["row_update_ratio"] == CHANGED_ROWS / M
    assert 0 < _rank1_pca(w0, steps)[max(STEPS)]["rank1_pca_evr2"]


def test_harness_catches_wrong_bounds_and_wrong_values(inputs, monkeypatch):
    """The checks above can fail: a declared bound the values leave, and a value off its oracle."""
    from dataclasses import replace

    from opd_dynamics.metrics import METRICS

    info = available()["sparsity_bf16"]
    narrowed = replace(info, columns=tuple(replace(o, bounds=(0, 1)) for o in info.columns))  # the old, wrong bounds
    monkeypatch.setitem(METRICS._items, "sparsity_bf16", narrowed)
    with pytest.raises(AssertionError, match="sparsity_bf16_numel .* outside its declared bounds"):
        test_metric_against_its_bounds_and_float64_oracle("sparsity_bf16", inputs)
    monkeypatch.setitem(ORACLES, "frobenius", ({}, _per_step(lambda w0, wt: {"frobenius": 1.01 * _core(w0, wt)["frobenius"]})))
    with pytest.raises(AssertionError):
        test_metric_against_its_bounds_and_float64_oracle("frobenius", inputs)
