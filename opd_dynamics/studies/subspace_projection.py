"""Early-subspace projection, offline (Geometry of OPD): ΔW_T ← ΔW_T V_K V_Kᵀ, V_K the top-K right singular
vectors of ΔW_t at about 20 % of training (K = 16). The paper: OPD keeps its score, SFT loses.

Variants (x NaN, drawn as bars, one bar per run): ``projected`` (attention/MLP ΔW_T projected, other modules keep
ΔW_T), ``early checkpoint`` (W_t itself, for scale). A K close to the matrix's smaller side keeps almost
everything: the manifest records K and the smallest in-dimension so the reader can judge.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..edits import EditSpec
from ..plans import Plan, Rule, resolve_step
from ._common import execute, prepare, references


def plans(at: str, k: int, side: str, select: Sequence[str]) -> list[Plan]:
    edit = EditSpec("project", {"onto": at, "k": int(k), "side": side})
    return [Plan("subspace_projection", "projected", None,
                 (Rule((*select, "matrix"), edit), Rule((), EditSpec("identity")))),
            Plan("subspace_projection", "early checkpoint", None, (Rule((), EditSpec("identity")),), source=at)]


def subspace_projection(runs, *, at: str = "20%", k: int = 16, side: str = "right",
                        select: Sequence[str] = ("kind=body",), out=None, **setup) -> pd.DataFrame:
    """Score of each run's ΔW_T projected onto its own early top-K right singular subspace (compare OPD with SFT)."""
    s = prepare(runs, **setup)
    ps = references("subspace_projection") + plans(at, k, side, tuple(select))
    dims = [min(s.engine.base.shape(n)) for n in s.engine.base.keys() if len(s.engine.base.shape(n)) == 2]
    settings = {"at": at, "k": k, "side": side, "select": list(select), "smallest_matrix_side": min(dims),
                "at_step": {r.name: resolve_step(sorted(r.steps), at)
                            for r in s.runs}}
    return execute(s, "subspace_projection", {r.name: ps for r in s.runs}, settings=settings, out=out)
