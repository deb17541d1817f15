"""Every decomposition path in opd_dynamics.linalg against float64 numpy/scipy, with the tolerances linalg states."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from opd_dynamics import linalg
from tests.helpers import low_rank_plus_noise

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SHAPES = [(96, 40), (40, 96), (64, 64)]  # tall, wide, square


@pytest.fixture(autouse=True, params=["torch", "numpy", "auto"])
def blas(request, monkeypatch):
    """Every test here holds every CPU BLAS backend (and the one ``auto`` picks on this machine) to linalg's bounds."""
    monkeypatch.setenv("OPD_DYNAMICS_BLAS", request.param)
    return request.param


def _oracle(x: np.ndarray):
    u, s, vh = np.linalg.svd(x, full_matrices=False)
    return u, s, vh.T


def _max_angle(a, b) -> float:
    return float(np.max(scipy.linalg.subspace_angles(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", SHAPES)
def test_singular_values_every_method(shape, device):
    x = low_rank_plus_noise(*shape, rank=8, noise=1e-3, seed=1)
    s_ref = _oracle(x)[1]
    t = torch.tensor(x, dtype=torch.float32, device=device)
    x32 = t.double().cpu().numpy()  # the float32 input is the thing decomposed
    s_ref32 = _oracle(x32)[1]
    s1 = s_ref32[0]
    keep = s_ref32 >= 1e-4 * s1
    # gram: exact to ~1e-10·σ₁ above 1e-4·σ₁ (linalg docstring)
    s_gram = linalg.singular_values(t, "gram")
    assert np.abs(s_gram - s_ref32)[keep].max() <= 1e-10 * s1
    # svd: float32, error ~ε₃₂·σ₁
    assert np.abs(linalg.singular_values(t, "svd") - s_ref32).max() <= 2e-6 * s1
    # svd64: the oracle itself
    assert np.abs(linalg.singular_values(t, "svd64") - s_ref32).max() <= 1e-12 * s1
    assert np.abs(s_ref32 - s_ref).max() <= 1e-5 * s1  # sanity: float32 rounding of the input only
    # wide and tall give the same values (relative 1e-9, or absolute 1e-12·σ₁ for the smallest kept σ, where
    # OpenBLAS's syrk and MKL's gemm round differently: still 100× inside the 1e-10·σ₁ contract)
    np.testing.assert_allclose(linalg.singular_values(t.T, "gram")[keep], s_gram[keep], rtol=1e-9, atol=1e-12 * s1)


def test_numerical_rank_counts_planted_rank():
    x = low_rank_plus_noise(80, 50, rank=5, noise=0.0, seed=2)
    s = linalg.singular_values(torch.tensor(x, dtype=torch.float32))
    assert linalg.numerical_rank(s, x.shape) == 5
    assert linalg.numerical_rank(np.zeros(4), (4, 4)) == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_gram_top_vectors_match_exact(shape):
    x = low_rank_plus_noise(*shape, rank=12, noise=1e-2, seed=3)
    u, s, v = _oracle(x)
    t = torch.tensor(x, dtype=torch.float64)
    g, side = linalg.gram(t)
    k = 6
    vec, sig = linalg.gram_top_vectors(g, k, oversample=4, n_iter=8)  # width 10 < dim/2: the iterative path
    ref = v if side == "right" else u
    assert _max_angle(vec.numpy(), ref[:, :k]) < 1e-8
    np.testing.assert_allclose(sig.numpy(), s[:k], rtol=1e-10)
    other = linalg.other_side(t, vec, sig, side).numpy()
    assert _max_angle(other, (u if side == "right" else v)[:, :k]) < 1e-8


def _flat_then_gap(m, n, k, seed=0):
    """σ = 1 for i ≤ k (flat), 0.5 beyond: the top-k subspace is well defined, the top vectors individually are not."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, min(m, n))))[0]
    v = np.linalg.qr(rng.standard_normal((n, min(m, n))))[0]
    s = np.where(np.arange(min(m, n)) < k, 1.0, 0.5)
    return (u * s) @ v.T, u[:, :k], v[:, :k]


@pytest.mark.parametrize("shape", [(200, 120), (120, 200)])
def test_top_k_subspace_flat_spectrum(shape):
    k = 16
    x, u_k, v_k = _flat_then_gap(*shape, k)
    t = torch.tensor(x)
    g, side = linalg.gram(t)
    # subspace error ≲ C·(σ_{k+p+1}/σ_k)^(2·n_iter) with C ~ tan of the random start's angle (≲ 10 here)
    vec, sig = linalg.gram_top_vectors(g, k, n_iter=8)
    assert _max_angle(vec.numpy(), v_k if side == "right" else u_k) < 10 * 0.5 ** 16
    np.testing.assert_allclose(sig.numpy(), 1.0, rtol=100 * 0.5 ** 32)  # σ error ~ (angle)²
    vec, sig = linalg.gram_top_vectors(g, k, n_iter=16)
    assert _max_angle(vec.numpy(), v_k if side == "right" else u_k) < 10 * 0.5 ** 32


@pytest.mark.parametrize("shape", SHAPES)
def test_exact_and_gram_svd(shape):
    x = low_rank_plus_noise(*shape, rank=10, noise=1e-2, seed=6)
    u_r, s_r, v_r = _oracle(x)
    u, s, v = linalg.exact_svd(torch.tensor(x, dtype=torch.float32), cpu=True)
    assert u.dtype == torch.float64 and u.device.type == "cpu"
    x32 = torch.tensor(x, dtype=torch.float32).double().numpy()
    np.testing.assert_allclose((u * s) @ v.T, x32, atol=1e-12)
    k = 8  # a clear gap after the planted rank-10 part
    ug, sg, vg = linalg.gram_svd(torch.tensor(x), k)
    np.testing.assert_allclose(sg.numpy(), s_r[:k], rtol=1e-10)
    assert _max_angle(ug.numpy(), u_r[:, :k]) < 1e-8 and _max_angle(vg.numpy(), v_r[:, :k]) < 1e-8


@pytest.mark.parametrize("angle", [1e-10, 1e-6, 1e-2, 0.7, np.pi / 2 - 1e-3])
def test_principal_angles_against_scipy_and_planted(angle):
    rng = np.random.default_rng(7)
    q = np.linalg.qr(rng.standard_normal((30, 30)))[0]
    a = q[:, :4]
    b = np.cos(angle) * q[:, :4] + np.sin(angle) * q[:, 4:8]   # every angle equals `angle`
    got = linalg.principal_angles(a, b)
    np.testing.assert_allclose(got, angle, rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose(np.sort(got), np.sort(scipy.linalg.subspace_angles(a, b)), rtol=1e-6, atol=1e-15)


def test_principal_angles_random_subspaces_and_unequal_dims():
    rng = np.random.default_rng(8)
    a = np.linalg.qr(rng.standard_normal((40, 7)))[0]
    b = np.linalg.qr(rng.standard_normal((40, 4)))[0]
    np.testing.assert_allclose(np.sort(linalg.principal_angles(a, b)), np.sort(scipy.linalg.subspace_angles(a, b)),
                               atol=1e-12)


def test_factored_svd_is_exact_and_composes():
    rng = np.random.default_rng(9)
    b, a, s = rng.standard_normal((50, 3)), rng.standard_normal((3, 30)), 0.7
    f = linalg.Factored(torch.tensor(b), torch.tensor(a), s)
    dense = s * b @ a
    u, sig, v = f.svd()
    u_r, s_r, v_r = _oracle(dense)
    np.testing.assert_allclose(sig.numpy(), s_r[:3], rtol=1e-12)
    assert _max_angle(u.numpy(), u_r[:, :3]) < 1e-10 and _max_angle(v.numpy(), v_r[:, :3]) < 1e-10
    np.testing.assert_allclose(f.dense(torch.float64).numpy(), dense, atol=1e-12)
    np.testing.assert_allclose(f.T.dense(torch.float64).numpy(), dense.T, atol=1e-12)
    np.testing.assert_allclose(f.rows(10, 20).dense(torch.float64).numpy(), dense[10:20], atol=1e-12)
    g = linalg.Factored(torch.tensor(rng.standard_normal((50, 2))), torch.tensor(rng.standard_normal((2, 30))), 2.0)
    diff = f - g
    assert diff.rank_bound == 5
    np.testing.assert_allclose(diff.dense(torch.float64).numpy(), dense - g.dense(torch.float64).numpy(), atol=1e-12)
    np.testing.assert_allclose(diff.svd()[1].numpy(), _oracle(diff.dense(torch.float64).numpy())[1][:5], atol=1e-12)


def test_counts_track_decompositions():
    before = linalg.COUNTS.copy()
    linalg.singular_values(torch.eye(3))
    linalg.exact_svd(torch.eye(3))
    after = linalg.COUNTS - before
    assert after["gram_eigvalsh"] == 1 and after["svd64"] == 1 and after["gram"] == 1


# The shape classes of a real model (scaled down 7×, same aspect ratios): attention (square), k/v (short-wide),
# MLP up (tall), MLP down (wide), embedding (very tall). Whatever backend is chosen, σ and the top-k vectors meet the
# gram path's contract against the float64 oracle.
SHAPE_CLASSES = {"attn": (128, 128), "kv": (18, 128), "mlp_up": (695, 128), "mlp_down": (128, 695),
                 "embed": (4000, 128)}


@pytest.mark.parametrize("cls", list(SHAPE_CLASSES))
def test_chosen_path_accuracy_per_shape_class(cls):
    shape = SHAPE_CLASSES[cls]
    x = low_rank_plus_noise(*shape, rank=6, noise=1e-3, seed=11)
    t = torch.tensor(x, dtype=torch.float32)
    u, s, v = _oracle(t.double().numpy())
    keep = s >= 1e-4 * s[0]
    sp = linalg.singular_values(t, "gram")
    assert np.abs(sp - s)[keep].max() <= 1e-10 * s[0]
    g, side = linalg.gram(t)
    vec, sig = linalg.gram_top_vectors(g, 5)
    other = linalg.other_side(t, vec, sig, side)
    left, right = (other, vec) if side == "right" else (vec, other)
    assert _max_angle(left.numpy(), u[:, :5]) < 1e-8 and _max_angle(right.numpy(), v[:, :5]) < 1e-8


@pytest.mark.parametrize("shape", [(300, 40), (40, 300)])
def test_frobenius_from_the_gram_trace_matches_the_direct_float64_sum(shape):
    """The engine takes ‖ΔW‖_F (and its NaN check) from trace(G) when a spectral metric forms G anyway."""
    from opd_dynamics.naming import Part
    from opd_dynamics.view import ModuleView

    x = torch.randn(*shape, generator=torch.Generator().manual_seed(3)) * torch.logspace(0, -6, shape[1])
    part = Part("m", "m.weight", 0, "attn_q")
    fast = ModuleView("r", part, 1, 0, x, torch.zeros(shape), norm_from_gram=True)
    oracle = float(np.sqrt((x.double().numpy() ** 2).sum()))
    assert fast.delta_norm == pytest.approx(oracle, rel=1e-13)
    assert fast.spectrum._gram is not None  # the Gram the spectral metrics reuse
    bad = x.clone()
    bad[5, 7] = float("nan")
    assert math.isnan(ModuleView("r", part, 1, 0, bad, torch.zeros(shape), norm_from_gram=True).delta_norm)
    bad[5, 7] = float("inf")
    assert not math.isfinite(ModuleView("r", part, 1, 0, bad, torch.zeros(shape), norm_from_gram=True).delta_norm)
