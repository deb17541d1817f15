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


def test_segment_cosines_planted_line_random_walk_and_oracle():
    from opd_dynamics.effopd.speedup import segment_cosines

    g = np.random.default_rng(1)
    w0, direction = g.normal(size=(6, 5)), g.normal(size=(6, 5))
    line = {s: {"a": w0 + s * direction, "b": w0.T - 3 * s * direction.T} for s in (0, 1, 2, 4, 8)}
    got = segment_cosines(line)
    assert sorted(got) == [1, 2, 4]
    for t, (cos, ratio) in got.items():
        assert cos == pytest.approx(1.0, abs=1e-12) and ratio == pytest.approx(1.0 if t == 1 else 2.0, rel=1e-12)
    # a random walk: unrelated segments, |cos| at the √(2/(π·mn)) scale of random directions
    walk, w = {0: {"a": w0}}, w0
    for s in (1, 2, 4, 8, 16):
        w = w + g.normal(size=w0.shape) * 1e-3
        walk[s] = {"a": w}
    assert all(abs(c) < 0.6 for c, _ in segment_cosines(walk).values())
    # oracle: scipy's cosine distance in float64 on one segment pair
    from scipy.spatial.distance import cosine

    d, d2 = (walk[4]["a"] - walk[2]["a"]).ravel(), (walk[8]["a"] - walk[4]["a"]).ravel()
    assert segment_cosines(walk, ["a"])[4][0] == pytest.approx(1 - cosine(d, d2), abs=1e-12)
    assert segment_cosines(walk)[4][1] == pytest.approx(np.linalg.norm(d2) / np.linalg.norm(d), rel=1e-12)
    # steps that are not powers of two, or whose neighbours are missing, are skipped; a zero segment is left out
    assert segment_cosines({0: {"a": w0}, 3: {"a": w0}, 6: {"a": w0}}) == {}
    assert segment_cosines({0: {"a": w0}, 1: {"a": w0}, 2: {"a": w0 + 1}}) == {}
