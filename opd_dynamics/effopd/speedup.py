"""Measured EffOPD speedup from two validation curves: steps for plain OPD and for EffOPD to reach a share of plain
OPD's final score (EffOPD arXiv 2605.11739, §5 reports steps to a target accuracy).

A curve is ``[(step, score), …]`` in step order, as the trainers log it. ``speedup = plain steps / EffOPD steps``
to reach ``frac`` × plain's final score; NaN when either never reaches it (a run that never gets there has no
finite step count, and 0 or ∞ would read as a measurement).

>>> plain = [(0, 0.3), (8, 0.5), (16, 0.7), (32, 0.8)]
>>> first_reaching(plain, 0.72)
32
>>> step_speedup(plain, [(0, 0.3), (8, 0.75), (16, 0.8)], 0.9)    # 0.72: plain at 32, EffOPD at 8
(32, 8, 4.0)
"""
from __future__ import annotations

import math
from typing import Sequence

Curve = Sequence[tuple[int, float]]


def first_reaching(curve: Curve, threshold: float, tol: float = 1e-12) -> float:
    """The first step whose score is ≥ ``threshold`` (within ``tol``, for scores like 0.9 × 0.7); NaN if none."""
    for step, score in curve:
        if score >= threshold - tol:
            return step
    return math.nan


def step_speedup(plain: Curve, effopd: Curve, frac: float = 0.9) -> tuple[float, float, float]:
    """``(plain steps, EffOPD steps, plain / EffOPD)`` to reach ``frac`` of plain's final score."""
    if not plain or not effopd:
        return math.nan, math.nan, math.nan
    target = frac * plain[-1][1]
    sp, se = first_reaching(plain, target), first_reaching(effopd, target)
    if math.isnan(sp) or math.isnan(se) or se == 0:
        return sp, se, math.nan
    return sp, se, sp / se


def segment_cosines(weights: dict, names: Sequence[str] | None = None) -> dict[int, tuple[float, float]]:
    """How straight the trajectory is at the scale EffOPD extrapolates: for each power of two t with t/2 and 2t in
    ``weights`` (``{step: {name: array}}``, step 0 = W₀), the mean over ``names`` (default: all) of

    - cos(Δ, Δ'), Δ = W_t − W_{t/2} the segment EffOPD extrapolates, Δ' = W_{2t} − W_t the one the run took next
      (1: a straight line, where W_t + cΔ lies on the path; ≈ 0 for unrelated directions, ±√(2/(π·mn)) in
      expectation for random ones);
    - ‖Δ'‖ / ‖Δ‖ (the next segment covers twice the steps: 2 for a straight line at constant speed).

    Computed in float64. Returns ``{t: (mean cosine, mean norm ratio)}``.

    >>> import numpy as np
    >>> line = {s: {"w": np.full((2, 2), float(s))} for s in (0, 1, 2, 4)}     # W_s = s·1: a straight line
    >>> segment_cosines(line)
    {1: (1.0, 1.0), 2: (1.0, 2.0)}
    """
    import numpy as np

    steps = sorted(weights)
    out = {}
    for t in steps:
        prev, nxt = (0 if t == 1 else t // 2), 2 * t
        if t < 1 or t & (t - 1) or prev not in weights or nxt not in weights:
            continue
        cos, ratio = [], []
        for n in names if names is not None else weights[t]:
            d = np.asarray(weights[t][n], np.float64) - np.asarray(weights[prev][n], np.float64)
            d2 = np.asarray(weights[nxt][n], np.float64) - np.asarray(weights[t][n], np.float64)
            a, b = float(np.linalg.norm(d)), float(np.linalg.norm(d2))
            if a == 0 or b == 0:
                continue
            cos.append(float((d * d2).sum()) / (a * b))
            ratio.append(b / a)
        if cos:
            out[t] = (float(np.mean(cos)), float(np.mean(ratio)))
    return out
