"""Token diagnostics (Rethinking OPD, arXiv 2604.13016) against a plain numpy reference and planted cases."""

import math

import numpy as np
import pytest
import torch

from opd_dynamics.diagnostics import gap_recovery, token_diagnostics


def reference(s, t, mask, k, weighting="p"):
    """Loop-per-position numpy float64, written from the definitions in docs/reference-runs.md."""
    rows = {key: [] for key in ("ratio", "mp", "mq", "gap", "adv")}
    for b, i in zip(*np.nonzero(mask)):
        p = np.exp(s[b, i] - s[b, i].max()); p /= p.sum()
        q = np.exp(t[b, i] - t[b, i].max()); q /= q.sum()
        inter = sorted(set(np.argsort(-p)[:k]) & set(np.argsort(-q)[:k]))
        rows["ratio"].append(len(inter) / k)
        rows["mp"].append(p[inter].sum())
        rows["mq"].append(q[inter].sum())
        rows["gap"].append(abs(-(q * np.log(q)).sum() + (p * np.log(p)).sum()))
        if inter:
            pb, qb = p[inter] / p[inter].sum(), q[inter] / q[inter].sum()
            adv = (pb * (np.log(qb) - np.log(pb))).sum()
            rows["adv"].append(adv / len(inter) if weighting == "uniform" else adv)
    return {"overlap_ratio": np.mean(rows["ratio"]), "overlap_mass_student": np.mean(rows["mp"]),
            "overlap_mass_teacher": np.mean(rows["mq"]), "entropy_gap": np.mean(rows["gap"]),
            "overlap_advantage": np.mean(rows["adv"])}


@pytest.mark.parametrize("k,weighting", [(4, "p"), (16, "p"), (8, "uniform")])
def test_matches_numpy_reference(k, weighting):
    rng = np.random.default_rng(k)
    s, t = rng.normal(size=(3, 5, 40)) * 2, rng.normal(size=(3, 5, 40)) * 2
    mask = (rng.random((3, 5)) > 0.3).astype(np.int64)
    got = token_diagnostics(torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32),
                            torch.tensor(mask), k=k, weighting=weighting)
    want = reference(s.astype(np.float32).astype(np.float64), t.astype(np.float32).astype(np.float64), mask, k, weighting)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_identical_distributions_are_perfectly_aligned():
    x = torch.randn(2, 6, 50)
    d = token_diagnostics(x, x.clone(), torch.ones(2, 6))
    assert d["overlap_ratio"] == pytest.approx(1.0)
    assert d["overlap_mass_student"] == pytest.approx(d["overlap_mass_teacher"])
    assert d["entropy_gap"] == pytest.approx(0.0, abs=1e-12)
    assert d["overlap_advantage"] == pytest.approx(0.0, abs=1e-12)


def test_disjoint_top_sets_have_no_overlap():
    s = torch.full((1, 1, 8), -10.0); s[..., :2] = 5.0
    t = torch.full((1, 1, 8), -10.0); t[..., 6:] = 5.0
    d = token_diagnostics(s, t, torch.ones(1, 1), k=2)
    assert d["overlap_ratio"] == 0.0 and d["overlap_mass_student"] == 0.0
    assert d["overlap_advantage"] == 0.0  # no position with a non-empty intersection


def test_overlap_advantage_is_never_positive():
    rng = np.random.default_rng(1)
    d = token_diagnostics(torch.tensor(rng.normal(size=(4, 4, 30))), torch.tensor(rng.normal(size=(4, 4, 30))),
                          torch.ones(4, 4), k=8)
    assert d["overlap_advantage"] < 0


def test_masked_positions_are_ignored():
    x, y = torch.randn(1, 3, 20), torch.randn(1, 3, 20)
    y2 = y.clone(); y2[0, 2] = torch.randn(20) * 9
    mask = torch.tensor([[1, 1, 0]])
    assert token_diagnostics(x, y, mask) == token_diagnostics(x, y2, mask)


def test_gap_recovery():
    assert gap_recovery(0.6, 0.2, 1.0) == pytest.approx(0.5)
    assert gap_recovery(0.1, 0.2, 1.0) == pytest.approx(-0.125)
    assert math.isnan(gap_recovery(0.5, 0.9, 0.9))
