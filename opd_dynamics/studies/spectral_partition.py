"""Spectral partition (EffOPD Fig. 3): each attention/MLP ΔW_T keeps only its top-k% or bottom-k% singular
components (k% of the numerical rank), the top part optionally rescaled to the full ‖ΔW_T‖_F.

Modules outside ``select`` (embeddings, norms) keep their full ΔW_T (``rest="final"``) or stay at W₀
(``rest="base"``). Variants: ``top``, ``bottom``, ``top_rescaled``; x = k in %.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..edits import EditSpec
from ..errors import OPDError
from ..plans import Plan, Rule
from ._common import execute, prepare, references

PERCENTS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0)


def plans(percents: Sequence[float], which: Sequence[str], rescale: bool, select: Sequence[str], rest: str) -> list[Plan]:
    if rest not in ("final", "base"):
        raise OPDError(f"rest={rest!r} not understood", hint="use final (keep full ΔW) or base (stay at W0)")
    tail = (Rule((), EditSpec("identity")),) if rest == "final" else ()
    variants = [(w, w, False) for w in which] + ([("top", "top_rescaled", True)] if rescale else [])
    out = []
    for w, label, resc in variants:
        for p in percents:
            edit = EditSpec("spectral", {"percent": float(p), "which": w, "rescale": resc})
            out.append(Plan("spectral_partition", label, float(p), (Rule((*select, "matrix"), edit), *tail)))
    return out


def spectral_partition(run, *, percents: Sequence[float] = PERCENTS, which: Sequence[str] = ("top", "bottom"),
                       rescale: bool = True, select: Sequence[str] = ("kind=body",), rest: str = "final",
                       out=None, **setup) -> pd.DataFrame:
    """Score when every selected ΔW_T keeps its top-k% / bottom-k% singular components (optionally rescaled)."""
    s = prepare(run, **setup)
    ps = references("spectral_partition") + plans(percents, which, rescale, tuple(select), rest)
    settings = {"percents": list(percents), "which": list(which), "rescale": rescale, "select": list(select), "rest": rest}
    return execute(s, "spectral_partition", {r.name: ps for r in s.runs}, settings=settings, out=out)
