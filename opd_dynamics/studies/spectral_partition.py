"""Spectral partition (EffOPD Fig. 3): each attention/MLP ΔW_T keeps only its top-k% or bottom-k% singular
components (k% of the numerical rank), the top part optionally rescaled to the full ‖ΔW_T‖_F.

Modules outside ``select`` (embeddings, norms) keep their full ΔW_T (``rest="final"``) or stay at W₀
(``rest="base"``). Variants: ``top``, ``bottom``, ``top_rescaled``; x = k in %.

``ranks`` switches to the EffOPD release's ``upd_rank.py``: keep an absolute number of components of each ΔW_T,
rescaled to ‖ΔW_T‖_F (variant ``top_rank_rescaled``, x = that number). ``preset="authors"`` gives ``ranks=(1,)``
and ``rest="base"`` as the release does (docs/fidelity.md).
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..edits import EditSpec
from ..errors import OPDError
from ..plans import Plan, Rule
from ..presets import resolve
from ._common import execute, prepare, references

PERCENTS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0)


def plans(percents: Sequence[float], which: Sequence[str], rescale: bool, select: Sequence[str], rest: str,
          ranks: Sequence[int] | None = None) -> list[Plan]:
    if rest not in ("final", "base"):
        raise OPDError(f"rest={rest!r} not understood", hint="use final (keep full ΔW) or base (stay at W0)")
    tail = (Rule((), EditSpec("identity")),) if rest == "final" else ()
    if ranks is not None:
        if not ranks or any(int(k) != k or k < 1 for k in ranks):
            raise OPDError(f"ranks={list(ranks)}: expected whole numbers ≥ 1", hint="e.g. --ranks 1,2,4")
        return [Plan("spectral_partition", "top_rank_rescaled", float(k),
                     (Rule((*select, "matrix"), EditSpec("spectral", {"rank": int(k), "which": "top", "rescale": True})),
                      *tail)) for k in ranks]
    variants = [(w, w, False) for w in which] + ([("top", "top_rescaled", True)] if rescale else [])
    out = []
    for w, label, resc in variants:
        for p in percents:
            edit = EditSpec("spectral", {"percent": float(p), "which": w, "rescale": resc})
            out.append(Plan("spectral_partition", label, float(p), (Rule((*select, "matrix"), edit), *tail)))
    return out


def spectral_partition(run, *, percents: Sequence[float] = PERCENTS, which: Sequence[str] = ("top", "bottom"),
                       rescale: bool = True, select: Sequence[str] = ("kind=body",), rest: str | None = None,
                       ranks: Sequence[int] | None = None, preset: str | None = None, out=None, **setup) -> pd.DataFrame:
    """Score when every selected ΔW_T keeps its top-k% / bottom-k% singular components (optionally rescaled).

    ``rest`` and ``ranks`` default to ``preset``'s: ``paper`` keeps the rest at ΔW_T and partitions by percent;
    ``authors`` keeps the rest at W₀ and an absolute rank 1, rescaled.
    """
    chosen = resolve("spectral_partition", preset, rest=rest, ranks=ranks)
    rest, ranks = chosen["rest"], chosen["ranks"]
    ps = plans(percents, which, rescale, tuple(select), rest, ranks)  # bad settings fail before anything is loaded
    s = prepare(run, **setup)
    ps = references("spectral_partition") + ps
    settings = {"percents": list(percents), "which": list(which), "rescale": rescale, "select": list(select), "rest": rest,
                "ranks": None if ranks is None else [int(k) for k in ranks], "preset": preset or "paper"}
    return execute(s, "spectral_partition", {r.name: ps for r in s.runs}, settings=settings, out=out)
