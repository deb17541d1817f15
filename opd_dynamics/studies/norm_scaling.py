"""Norm scaling (EffOPD Fig. 1a): W₀ + α·ΔW_T for every module, scored against α and the global ‖α·ΔW_T‖_F.

The global norm is the ``update_norm`` row of each plan: sqrt(Σ_modules ‖α·ΔW‖_F²) over every floating tensor.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..edits import EditSpec
from ..plans import Plan, Rule
from ._common import execute, prepare, references

ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def plans(alphas: Sequence[float]) -> list[Plan]:
    return [Plan("norm_scaling", "", float(a), (Rule((), EditSpec("scale", {"alpha": float(a)})),)) for a in alphas]


def norm_scaling(run, *, alphas: Sequence[float] = ALPHAS, out=None, **setup) -> pd.DataFrame:
    """Score of W₀ + α·ΔW_T for α in ``alphas`` (default 0, 0.1, …, 1)."""
    s = prepare(run, **setup)
    ps = references("norm_scaling") + plans(alphas)
    return execute(s, "norm_scaling", {r.name: ps for r in s.runs}, settings={"alphas": list(alphas)}, out=out)
