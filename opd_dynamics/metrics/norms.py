"""Norm metrics (EffOPD appendix): how big the update is, absolutely and relative to the weights.

They need no decomposition and apply to every tensor, matrices and vectors alike.
"""
from __future__ import annotations

import math

from .. import linalg
from .registry import metric


@metric("frobenius", family="norms", matrix=False, bounds=(0, math.inf), label=r"$\|\Delta W\|_F$",
        paper="EffOPD App. B")
def frobenius():
    """‖ΔW‖_F = sqrt(Σσᵢ²): the size of the update."""
    return lambda view: view.delta_norm  # from the factors' σ for LoRA, without forming ΔW


@metric("relative_update", family="norms", matrix=False, bounds=(0, math.inf),
        label=r"$\|\Delta W\|_F \,/\, \|W_0\|_F$", paper="EffOPD App. B")
def relative_update():
    """‖ΔW‖_F / ‖W_ref‖_F: the update's size relative to the weights it starts from (NaN when W_ref = 0)."""

    def compute(view):
        ref = view.cached(f"fro_ref@{view.ref_step}", lambda: linalg.frobenius(view.ref_raw))
        return view.delta_norm / ref if ref > 0 else math.nan

    return compute
