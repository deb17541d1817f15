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
