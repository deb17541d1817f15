"""Where-the-update-lands metrics (sparsity, principal angles, NSS, mask overlaps; Path Not Taken arXiv 2511.08567,
Geometry of OPD arXiv 2606.07082 App. C.3) against float64 numpy/scipy oracles and planted structures, and every
metric through the engine in the step-to-step views."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from opd_dynamics import analyze, available_metrics, linalg
from opd_dynamics.metrics.registry import Spec
from opd_dynamics.metrics.sparsity import overall_sparsity
from opd_dynamics.synthetic import make_synthetic_runs
from opd_dynamics.table import from_rows
from tests.helpers import compute, view_of


def _bf16(x) -> np.ndarray:
    return torch.as_tensor(x).to(torch.bfloat16).to(torch.float64).numpy()


def _weights(m=48, n=32, seed=0, scale=0.02):
    rng = np.random.default_rng(seed)
    w0 = torch.tensor(scale * rng.standard_normal((m, n)), dtype=torch.bfloat16)
    return w0, rng


def _oracle_unchanged(w0, wt, relative=True):
    a, b = _bf16(w0), _bf16(wt)
    if relative:
        return np.abs(b - a) <= 1e-3 * np.maximum(np.abs(a), np.abs(b))
    return np.abs(b - a) <= 1e-5


# -- sparsity ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_sparsity_against_oracle(dtype):
    w0, rng = _weights()
    w0 = w0.to(dtype)
    wt = (w0.double() + torch.tensor(1e-4 * rng.standard_normal(w0.shape) * (rng.random(w0.shape) < 0.4))).to(dtype)
    out = compute("sparsity_bf16", w0, wt)
    unchanged = _oracle_unchanged(w0, wt)
    assert out["sparsity_bf16"] == pytest.approx(unchanged.mean(), abs=1e-12)
    assert out["sparsity_bf16_numel"] == w0.numel()
    assert out["sparsity_bf16_bits"] == (16 if dtype == torch.bfloat16 else 32)
    absolute = compute("sparsity_bf16", w0, wt, tolerance="absolute")["sparsity_bf16"]
    assert absolute == pytest.approx(_oracle_unchanged(w0, wt, relative=False).mean(), abs=1e-12)
    rc = compute("row_col_update_ratio", w0, wt)
    assert rc["row_update_ratio"] == pytest.approx((~unchanged).any(axis=1).mean())
    assert rc["col_update_ratio"] == pytest.approx((~unchanged).any(axis=0).mean())


def test_sparsity_relative_tolerance_is_bitwise_bf16_equality():
    w0, rng = _weights(seed=1)
    wt = (w0.double() * torch.tensor(1 + 0.02 * rng.standard_normal(w0.shape))).to(torch.bfloat16)
    bitwise = (w0.view(torch.int16) == wt.view(torch.int16)).double().mean().item()
    assert compute("sparsity_bf16", w0, wt)["sparsity_bf16"] == pytest.approx(bitwise, abs=1e-12)


def test_sub_half_ulp_step_leaves_sparsity_one():
    """A float32 step smaller than half a bf16 ULP rounds back to the same bf16 value: nothing changed."""
    w0, _ = _weights(seed=2)
    w32 = w0.to(torch.float32)
    ulp = torch.finfo(torch.bfloat16).eps * w32.abs()     # ≥ one ULP at each entry
    wt = w32 + 0.2 * ulp
    assert compute("sparsity_bf16", w32, wt)["sparsity_bf16"] == 1.0
    rc = compute("row_col_update_ratio", w32, wt)
    assert rc == {"row_update_ratio": 0.0, "col_update_ratio": 0.0}
    assert math.isnan(compute("low_magnitude_overlap", w32, wt)["low_magnitude_overlap"])  # |M_upd| = 0


def test_row_col_planted_rows():
    w0, _ = _weights(m=20, n=10, seed=3)
    wt = w0.clone()
    wt[[2, 5, 7], :] = (wt[[2, 5, 7], :].float() * 1.5).to(torch.bfloat16)
    out = compute("row_col_update_ratio", w0, wt)
    assert out["row_update_ratio"] == pytest.approx(3 / 20)
    assert out["col_update_ratio"] == 1.0


def test_overall_sparsity_is_parameter_weighted(tmp_path):
    rows = []
    for module, frac, n in (("a", 0.9, 100), ("b", 0.1, 300), ("c", 0.5, 600)):
        rows += [("r", 1, 0, module, 0, None, "mlp_up", "sparsity_bf16", frac),
                 ("r", 1, 0, module, 0, None, "mlp_up", "sparsity_bf16_numel", n)]
    got = overall_sparsity(from_rows(rows))
    assert got["sparsity_bf16"].item() == pytest.approx((0.9 * 100 + 0.1 * 300 + 0.5 * 600) / 1000)


# -- principal angles and NSS ----------------------------------------------------------------------------------------
def _svd(x):
    u, s, vh = np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False)
    return u, s, vh.T


@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
@pytest.mark.parametrize("method", ["svd", "gram"])
def test_principal_angles_against_scipy(shape, method):
    rng = np.random.default_rng(4)
    w0 = rng.standard_normal(shape)
    wt = w0 + 0.05 * rng.standard_normal(shape)
    k = 6
    got = compute("principal_angles", w0, wt, k=k, method=method)
    (u0, _, v0), (ut, _, vt) = _svd(torch.tensor(w0).float()), _svd(torch.tensor(wt).float())
    left = np.degrees(scipy.linalg.subspace_angles(u0[:, :k], ut[:, :k]))
    right = np.degrees(scipy.linalg.subspace_angles(v0[:, :k], vt[:, :k]))
    assert got["principal_angle_left_max"] == pytest.approx(left.max(), rel=1e-6)
    assert got["principal_angle_left_mean"] == pytest.approx(left.mean(), rel=1e-6)
    assert got["principal_angle_right_max"] == pytest.approx(right.max(), rel=1e-6)
    assert got["principal_angle_right_mean"] == pytest.approx(right.mean(), rel=1e-6)


def _with_spectrum(m, n, s, seed):
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, min(m, n))))[0]
    v = np.linalg.qr(rng.standard_normal((n, min(m, n))))[0]
    return u, v, (u * s) @ v.T


def test_bottom_subspace_update_leaves_top_subspace_and_mask_at_baseline():
    """ΔW inside W₀'s bottom singular subspace: the top-k subspaces do not move (≈0°), NSS is what the bottom σ
    moved, and a dense update changes every entry so each mask overlap equals its baseline."""
    m, n, k = 60, 40, 8
    s0 = np.linspace(10, 1, min(m, n))
    u, v, w0 = _with_spectrum(m, n, s0, seed=5)
    d = np.zeros_like(s0)
    d[k + 4:] = -0.2                                           # only σ beyond the top k + 4 change (order kept)
    wt = w0 + (u * d) @ v.T
    w0t, wtt = torch.tensor(w0), torch.tensor(wt)
    ang = compute("principal_angles", w0t, wtt, k=k)
    assert max(ang.values()) < 1e-5
    nss = compute("spectral_shift", w0t, wtt)
    assert nss == pytest.approx(np.linalg.norm(d) / np.linalg.norm(s0), rel=1e-9)
    pm = compute("principal_mask_overlap", w0t, wtt, k=k)
    assert pm["principal_mask_overlap_chance"] == pytest.approx(0.5, abs=1 / (m * n))
    upd = ~_oracle_unchanged(w0, wt)
    assert upd.mean() > 0.9
    # ΔW lives off W₀'s principal subspace, so its changes are not concentrated on principal entries
    assert abs(pm["principal_mask_overlap"] - pm["principal_mask_overlap_chance"]) < 0.05


def test_rotation_of_top_subspace_is_measured_in_degrees():
    m, n, k = 50, 30, 4
    s0 = np.concatenate([np.full(k, 5.0), np.linspace(1, 0.5, min(m, n) - k)])
    u, v, w0 = _with_spectrum(m, n, s0, seed=6)
    theta = np.radians(3.0)
    u_rot = u.copy()
    u_rot[:, :k] = np.cos(theta) * u[:, :k] + np.sin(theta) * u[:, k:2 * k]
    u_rot[:, k:2 * k] = -np.sin(theta) * u[:, :k] + np.cos(theta) * u[:, k:2 * k]
    wt = (u_rot * s0) @ v.T
    got = compute("principal_angles", torch.tensor(w0), torch.tensor(wt), k=k)
    assert got["principal_angle_left_max"] == pytest.approx(3.0, rel=1e-6)
    assert got["principal_angle_left_mean"] == pytest.approx(3.0, rel=1e-6)
    assert got["principal_angle_right_max"] < 1e-6


def test_spectral_shift_against_numpy():
    rng = np.random.default_rng(7)
    w0 = torch.tensor(rng.standard_normal((30, 20)), dtype=torch.bfloat16)
    wt = (w0.float() + 0.01 * torch.tensor(rng.standard_normal((30, 20)), dtype=torch.float32)).to(torch.bfloat16)
    s0 = np.linalg.svd(w0.double().numpy(), compute_uv=False)
    st = np.linalg.svd(wt.double().numpy(), compute_uv=False)
    assert compute("spectral_shift", w0, wt) == pytest.approx(np.linalg.norm(st - s0) / np.linalg.norm(s0), rel=1e-9)


# -- mask overlaps -----------------------------------------------------------------------------------------------
def test_mask_overlaps_against_oracle():
    w0, rng = _weights(m=40, n=36, seed=8)
    wt = (w0.double() + 3e-3 * torch.tensor(rng.standard_normal(w0.shape) * (rng.random(w0.shape) < 0.3))).to(torch.bfloat16)
    k, alpha = 5, 0.3
    upd = ~_oracle_unchanged(w0, wt)
    u, s, v = _svd(w0.double().numpy())
    recon = np.abs((u[:, :k] * s[:k]) @ v[:, :k].T)
    n_top = math.ceil(alpha * recon.size)
    princ = recon >= np.sort(recon.ravel())[-n_top]
    got = compute("principal_mask_overlap", w0, wt, k=k, alpha=alpha)
    assert got["principal_mask_overlap"] == pytest.approx((princ & upd).sum() / upd.sum(), abs=1e-12)
    assert got["principal_mask_overlap_chance"] == pytest.approx(princ.mean(), abs=1e-12)
    mag = np.abs(w0.double().numpy())
    low = mag <= np.sort(mag.ravel())[n_top - 1]                # ties at the threshold included
    got = compute("low_magnitude_overlap", w0, wt, alpha=alpha)
    assert got["low_magnitude_overlap"] == pytest.approx((low & upd).sum() / upd.sum(), abs=1e-12)
    assert got["low_magnitude_overlap_chance"] == pytest.approx(low.mean(), abs=1e-12)


def test_update_on_low_magnitude_entries_has_overlap_one():
    w0, _ = _weights(m=30, n=20, seed=9)
    mag = w0.float().abs()
    wt = w0.clone()
    small = mag < mag.median() * 0.5
    wt[small] = (wt[small].float() * 3 + 1e-3).to(torch.bfloat16)
    got = compute("low_magnitude_overlap", w0, wt)
    assert got["low_magnitude_overlap"] == 1.0


def test_w0_decomposed_once_per_module_for_the_whole_trajectory():
    w0, rng = _weights(seed=10)
    cache: dict = {}
    specs = [Spec(n).build() for n in ("principal_angles", "spectral_shift", "principal_mask_overlap")]
    before = linalg.COUNTS.copy()
    for step in (1, 2, 3):
        wt = (w0.float() + 1e-2 * step * torch.randn(w0.shape)).to(torch.bfloat16)
        view = view_of(w0, wt, step=step, cache=cache)
        for m in specs:
            m(view)
    done = linalg.COUNTS - before
    assert done["svd64"] == 1 + 3  # W₀ once, W_t once per step, shared by all three metrics


# -- every metric in every view, through the engine ---------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return make_synthetic_runs(tmp_path_factory.mktemp("geo"), steps=(1, 2, 4), layers=1, hidden=16,
                               dtype="bfloat16")


def _all_metrics():
    return sorted(available_metrics())


@pytest.mark.parametrize("against", ["base", "prev", 2])
def test_every_metric_in_every_view(runs, against):
    df = analyze([runs["opd"]], base=runs["base"], metrics=_all_metrics(), against=against, progress=False,
                 device="cpu")
    names = set(df["metric"])
    for info in available_metrics().values():
        assert set(info.outputs) <= names, info.name
    body = df[df["kind"].isin(["mlp_up", "attn_q"]) & ~df["metric"].str.startswith("rank1_pca")]
    # a square attn_q (16×16) and mlp_up's right side (n = 16 = k) are their whole space: NaN, by definition
    whole = body["metric"].str.startswith("principal_angle_") & (
        (body["kind"] == "attn_q") | body["metric"].str.contains("_right_"))
    assert np.isfinite(body.loc[~whole, "value"]).all()
    assert body.loc[whole, "value"].isna().all() and whole.any()
    if against == "prev":
        assert sorted(set(zip(df.step, df.ref_step))) == [(1, 0), (2, 1), (4, 2)]
    if against == 2:
        assert sorted(set(zip(df.step, df.ref_step))) == [(1, 2), (4, 2)]


def test_w0_metrics_use_w0_in_every_view(runs):
    """principal_angles / spectral_shift compare W_t with W₀ whatever `against` is; reference=ref uses W_ref."""
    w0_metrics = ["principal_angles", "spectral_shift", "principal_mask_overlap:k=4", "low_magnitude_overlap"]
    sel = ["kind=mlp_up"]
    base = analyze([runs["opd"]], base=runs["base"], metrics=w0_metrics, select=sel, progress=False, device="cpu")
    prev = analyze([runs["opd"]], base=runs["base"], metrics=w0_metrics, select=sel, against="prev", progress=False,
                   device="cpu")
    fixed = analyze([runs["opd"]], base=runs["base"], metrics=w0_metrics[:2], select=sel, against=2, progress=False,
                    device="cpu")
    key = ["module", "step", "metric"]
    for other in (prev, fixed):
        geo = other[other.metric.str.startswith(("principal_angle_", "spectral_shift"))]
        merged = geo.merge(base, on=key, suffixes=("", "_base"))
        assert len(merged) == len(geo) > 0
        np.testing.assert_allclose(merged["value"], merged["value_base"], rtol=1e-12)
    # masks from W₀, M_upd from W_{t'} -> W_t: baselines equal, overlaps can differ
    b = prev[prev.metric == "low_magnitude_overlap_chance"].value.to_numpy()
    assert np.allclose(b, base[base.metric == "low_magnitude_overlap_chance"].value.to_numpy())
    # reference=ref with against=prev: angles between W_{t'} and W_t, checked against scipy
    ref = analyze([runs["opd"]], base=runs["base"], metrics=["principal_angles:k=4,reference=\"ref\""], select=sel,
                  against="prev", progress=False, device="cpu")
    from opd_dynamics.io.checkpoint import Checkpoint
    module = ref.module.iloc[0]
    w2 = Checkpoint(runs["opd"] / "checkpoint-2").get_tensor(module).double().numpy()
    w4 = Checkpoint(runs["opd"] / "checkpoint-4").get_tensor(module).double().numpy()
    u2, u4 = _svd(w2)[0][:, :4], _svd(w4)[0][:, :4]
    got = ref[(ref.step == 4) & (ref.module == module) & (ref.metric == "principal_angle_left_max")].value.item()
    assert got == pytest.approx(np.degrees(scipy.linalg.subspace_angles(u2, u4)).max(), rel=1e-6)
