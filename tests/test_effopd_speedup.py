"""Measured EffOPD speedup from validation curves: planted curves with a known answer and a numpy oracle."""
from __future__ import annotations

import math

import numpy as np
import pytest

from opd_dynamics.effopd.speedup import first_reaching, step_speedup


def _oracle(curve, frac_of, frac):
    steps, scores = np.array(curve, dtype=np.float64).T
    target = frac * frac_of[-1][1]
    hit = np.nonzero(scores >= target - 1e-12)[0]
    return steps[hit[0]] if len(hit) else math.nan


def test_planted_doubling_is_a_speedup_of_two():
    """EffOPD that is plain OPD run at twice the pace reaches every target in half the steps."""
    plain = [(s, 1 - 0.9 ** s) for s in range(0, 65, 4)]
    effopd = [(s, 1 - 0.9 ** (2 * s)) for s in range(0, 65, 2)]
    for frac in (0.5, 0.9, 0.95):
        sp, se, ratio = step_speedup(plain, effopd, frac)
        assert ratio == pytest.approx(2.0, abs=0.26)  # the 4-step grid of plain rounds its step up
        assert (sp, se) == (_oracle(plain, plain, frac), _oracle(effopd, plain, frac))


def test_random_curves_match_the_numpy_oracle():
    g = np.random.default_rng(0)
    for _ in range(200):
        n = int(g.integers(2, 12))
        steps = np.cumsum(g.integers(1, 9, n)).tolist()
        plain = list(zip(steps, g.random(n).tolist()))
        effopd = list(zip(steps, g.random(n).tolist()))
        frac = float(g.choice([0.5, 0.9, 0.95, 1.0]))
        sp, se, ratio = step_speedup(plain, effopd, frac)
        assert sp == _oracle(plain, plain, frac)
        eo = _oracle(effopd, plain, frac)
        assert (math.isnan(se) and math.isnan(eo)) or se == eo
        assert (math.isnan(ratio) and (math.isnan(eo) or eo == 0)) or ratio == pytest.approx(sp / eo, rel=0)


def test_never_reaching_is_nan_not_zero_or_infinity():
    plain = [(0, 0.2), (8, 0.6), (16, 0.8)]
    assert math.isnan(first_reaching([(0, 0.1), (8, 0.2)], 0.5))
    sp, se, ratio = step_speedup(plain, [(0, 0.2), (8, 0.3), (16, 0.4)], 0.9)
    assert sp == 16 and math.isnan(se) and math.isnan(ratio)
    assert all(math.isnan(x) for x in step_speedup([], plain))
    # 0.9 × 0.005 is 0.0045000000000000005 in floating point: a curve at 0.0045 reaches it
    assert 0.0045 < 0.9 * 0.005 and first_reaching([(4, 0.0045)], 0.9 * 0.005) == 4
