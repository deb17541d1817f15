"""Norm rescaling of an early checkpoint (EffOPD Fig. 4c): ΔW̃_t = [1 + β(‖ΔW_T‖_F/‖ΔW_t‖_F − 1)]·ΔW_t per module.

For each p in ``at`` (% of training) the checkpoint nearest p % of training supplies ΔW_t (variant ``step t (q%)`` with the
actual q = t/T); β = 0 is that checkpoint as it is, β = 1 the full rescale to ‖ΔW_T‖_F. Every module in ``select``
(default: all) is rescaled; the rest keep ΔW_t unscaled.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..edits import EditSpec
from ..plans import Plan, Rule, resolve_step
from ._common import execute, prepare, references

BETAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PROGRESS = (10.0, 25.0, 50.0)


def plans(steps: Sequence[int], at: Sequence[float], betas: Sequence[float], select: Sequence[str]) -> list[Plan]:
    out, seen = [], set()
    final = max(steps)
    for p in at:
        t = resolve_step(steps, f"{p:g}%")
        if t in seen:
            continue
        seen.add(t)
        variant = f"step {t} ({100 * t / final:.0f}%)"
        tail = (Rule((), EditSpec("identity")),) if select else ()
        for b in betas:
            rule = Rule(tuple(select), EditSpec("norm_rescale", {"beta": float(b), "target": "final"}))
            out.append(Plan("early_rescale", variant, float(b), (rule, *tail), source=str(t),
                            note=f"nearest saved step to {p:g}% of {final}"))
    return out


def early_rescale(run, *, at: Sequence[float] = PROGRESS, betas: Sequence[float] = BETAS,
                  select: Sequence[str] = (), out=None, **setup) -> pd.DataFrame:
    """Score of early checkpoints whose per-module updates are rescaled towards ‖ΔW_T‖_F, for each β."""
    s = prepare(run, **setup)
    by_run = {r.name: references("early_rescale") + plans(sorted(r.steps), at, betas, select) for r in s.runs}
    settings = {"at_percent": list(at), "betas": list(betas), "select": list(select)}
    return execute(s, "early_rescale", by_run, settings=settings, out=out)
