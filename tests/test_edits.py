"""Edits against numpy float64 oracles and planted structures; edit and plan specs round-trip through JSON."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from opd_dynamics.edits import EditSpec, norm_rescale, project, spectral_keep, top_subspace
from opd_dynamics.errors import OPDError, SelectionError
from opd_dynamics.plans import Plan, Rule, parse_label, resolve_step

RNG = np.random.default_rng(0)


def t64(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def oracle_spectral(d, percent, which, rescale):
    u, s, vt = np.linalg.svd(d, full_matrices=False)
    r = int(np.sum(s > s[0] * max(d.shape) * np.finfo(np.float32).eps))
    k = min(r, int(np.ceil(percent / 100 * r - 1e-9)))
    idx = np.arange(k) if which == "top" else np.arange(r - k, r)
    kept = (u[:, idx] * s[idx]) @ vt[idx]
    if rescale and k:
        kept *= np.linalg.norm(d) / np.linalg.norm(kept)
    return kept


@pytest.mark.parametrize("shape", [(12, 7), (5, 9)])
@pytest.mark.parametrize("percent,which,rescale", [(10, "top", False), (30, "top", True), (50, "bottom", False),
                                                   (100, "top", False), (0, "top", False)])
def test_spectral_matches_numpy(shape, percent, which, rescale):
    d = RNG.standard_normal(shape)
    got = spectral_keep(t64(d), percent, which, rescale).numpy()
    np.testing.assert_allclose(got, oracle_spectral(d, percent, which, rescale), atol=1e-12)


def test_scale_and_norm_rescale_match_numpy():
    d, dT = RNG.standard_normal((6, 4)), RNG.standard_normal((6, 4))
    built = EditSpec("scale", {"alpha": 0.3}).build()
    np.testing.assert_allclose(built(None, t64(d), {}).numpy(), 0.3 * d, rtol=1e-15)
    for beta in (0.0, 0.5, 0.8, 1.0):
        want = (1 + beta * (np.linalg.norm(dT) / np.linalg.norm(d) - 1)) * d
        got = EditSpec("norm_rescale", {"beta": beta}).build()(None, t64(d), {"final": t64(dT)}).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-13)
    full = norm_rescale(t64(d), np.linalg.norm(dT)).numpy()
    assert np.isclose(np.linalg.norm(full), np.linalg.norm(dT), rtol=1e-14)
    assert torch.equal(norm_rescale(torch.zeros(3, dtype=torch.float64), 5.0), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("side", ["right", "left"])
def test_project_matches_numpy(side):
    x, early = RNG.standard_normal((9, 7)), RNG.standard_normal((9, 7))
    u, s, vt = np.linalg.svd(early)
    k = 3
    want = x @ vt[:k].T @ vt[:k] if side == "right" else u[:, :k] @ u[:, :k].T @ x
    got = EditSpec("project", {"onto": "20%", "k": k, "side": side}).build()(None, t64(x), {"20%": t64(early)})
    np.testing.assert_allclose(got.numpy(), want, atol=1e-12)


def test_planted_structures():
    d = RNG.standard_normal((10, 8))
    np.testing.assert_allclose(spectral_keep(t64(d), 100).numpy(), d, atol=1e-12)  # top-100 % keeps ΔW
    rank2 = RNG.standard_normal((10, 2)) @ RNG.standard_normal((2, 8))
    # numerical rank 2: "top 100 %" and "top k% with k covering 2 of 2 components" are both the matrix itself
    np.testing.assert_allclose(spectral_keep(t64(rank2), 100).numpy(), rank2, atol=1e-12)
    np.testing.assert_allclose(spectral_keep(t64(rank2), 2 / 8 * 100, basis="min_dim").numpy(), rank2, atol=1e-12)
    # projection of a rank-2 ΔW onto its own top-16 (here: top-2, the rest has σ ≈ 0) subspace is the identity
    v = top_subspace(t64(rank2), 16)
    assert v.shape[1] == 2
    np.testing.assert_allclose(project(t64(rank2), v).numpy(), rank2, atol=1e-12)
    np.testing.assert_allclose(project(t64(d), top_subspace(t64(d), 8)).numpy(), d, atol=1e-10)  # full subspace


def test_identity_and_revert():
    d = t64(RNG.standard_normal((3, 3)))
    assert torch.equal(EditSpec("identity").build()(None, d, {}), d)
    assert not EditSpec("revert").info.reads_delta
    assert torch.equal(EditSpec("revert").build()(None, d, {}), torch.zeros_like(d))


def test_specs_round_trip_and_errors():
    spec = EditSpec.parse("project:onto=25%,k=8")
    assert spec == EditSpec("project", {"onto": "25%", "k": 8})
    assert EditSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.build().needs == ("25%",)
    with pytest.raises(SelectionError, match="did you mean spectral"):
        EditSpec("spectrl").build()
    with pytest.raises(SelectionError, match="does not take settings"):
        EditSpec("scale", {"beta": 1}).build()
    with pytest.raises(SelectionError, match="which="):
        EditSpec("spectral", {"which": "middle"}).build()
    plan = Plan("sliding_window", "mlp", 3.0, (Rule(("kind=mlp_*", "layer=1-5"), EditSpec("identity")),), "final", 3)
    assert Plan.from_json(json.loads(json.dumps(plan.to_json()))) == plan
    assert parse_label(plan.module) == ("sliding_window", "mlp", 3.0)
    with pytest.raises(OPDError, match="contains '/'"):
        Plan("a/b")


def test_resolve_step():
    steps = [1, 2, 4, 8, 12, 16]
    assert [resolve_step(steps, r) for r in ("final", "base", "10%", "20%", "50%", 8)] == [16, 0, 2, 4, 8, 8]
    with pytest.raises(OPDError, match="no checkpoint at step 3"):
        resolve_step(steps, 3)
    with pytest.raises(OPDError, match="not understood"):
        resolve_step(steps, "early")
