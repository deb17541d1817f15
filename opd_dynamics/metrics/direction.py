"""How the update's direction evolves (EffOPD Fig. 4b, Geometry of OPD): metrics with memory across steps.

Each collects a small state per step (top-k singular vectors, k × dim floats) and is finalised once the
module's trajectory is done. "Final" is the last step analysed for the run. Singular vectors have arbitrary
sign, so they are compared with |cos| or projectors, never with raw dot products. k is capped at
min(k, r_t, r_T) — vectors beyond an update's numerical rank are arbitrary.
"""
from __future__ import annotations

from typing import Literal

import math

import numpy as np

from .registry import metric


def paired_alignment(a: np.ndarray, b: np.ndarray) -> float:
    """(1/K) Σᵢ |⟨aᵢ, bᵢ⟩| for column-paired unit vectors.

    >>> paired_alignment(np.eye(3)[:, :2], -np.eye(3)[:, :2])
    1.0
    """
    return float(np.abs((a * b).sum(axis=0)).mean())


def subspace_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """‖AᵀB‖_F² / K: the mean cos² of the principal angles between two K-dim subspaces (orthonormal A, B).

    >>> subspace_similarity(np.eye(3)[:, :2], np.eye(3)[:, [1, 0]])
    1.0
    """
    return float(((a.T @ b) ** 2).sum() / a.shape[1])


class _ToFinal:
    """Collect top-k vectors per step; compare each step with the final one."""

    def __init__(self, k: int, side: str, mode: str):
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        if mode not in ("paired", "subspace"):
            raise ValueError(f"mode must be 'paired' or 'subspace', got {mode!r}")
        self.k, self.side, self.mode = k, side, mode

    def collect(self, view):
        if view.spectrum.rank == 0:
            return None
        k = min(self.k, view.spectrum.rank)
        return view.spectrum.vectors(k, self.side).cpu().numpy()

    def finalize(self, states):
        final = states[max(states)]
        out = {}
        for step, vec in states.items():
            if vec is None or final is None:
                out[step] = math.nan
                continue
            k = min(vec.shape[1], final.shape[1])
            a, b = vec[:, :k], final[:, :k]
            out[step] = paired_alignment(a, b) if self.mode == "paired" else subspace_similarity(a, b)
        return out


@metric("alignment_to_final", family="direction", trajectory=True, bounds=(0, 1), paper="EffOPD Fig. 4b")
def alignment_to_final(k: int = 20, side: Literal["left", "right"] = "left",
                       mode: Literal["paired", "subspace"] = "paired"):
    """Mean |cos| between the i-th top singular vectors of ΔW_t and ΔW_T, i = 1..k (or subspace overlap)."""
    return _ToFinal(k, side, mode)


@metric("subspace_locking", family="direction", trajectory=True, bounds=(0, 1), paper="Geometry of OPD §4")
def subspace_locking(k: int = 16):
    """Sim_K(t, T) = ‖V_K(t)ᵀ V_K(T)‖_F² / K over the top-K right singular vectors of ΔW."""
    return _ToFinal(k, "right", "subspace")


MOTION_TOL = 1e-7


class _Rank1PCA:
    def collect(self, view):
        if view.spectrum.rank == 0:
            return None
        return view.spectrum.vectors(1, "left")[:, 0].cpu().numpy()

    def finalize(self, states):
        steps = [s for s in sorted(states) if states[s] is not None]
        last = max(states)
        if len(steps) < 3:
            return {last: {"rank1_pca_evr1": math.nan, "rank1_pca_evr2": math.nan}}
        rows, prev = [], None
        for s in steps:  # align each u₁ to the previous one's sign
            u = states[s]
            if prev is not None and float(u @ prev) < 0:
                u = -u
            rows.append(u)
            prev = u
        x = np.stack(rows)
        x = x - x.mean(axis=0)
        sv = np.linalg.svd(x, compute_uv=False) ** 2
        # u₁ that does not move (RMS displacement below ~1e-7, the Gram path's vector accuracy) has no principal
        # direction of motion: its "EVR" would be the PCA of rounding noise, so report NaN
        moved = sv.sum() > len(rows) * MOTION_TOL ** 2
        evr = sv / sv.sum() if moved else np.full_like(sv, math.nan)
        return {last: {"rank1_pca_evr1": float(evr[0]), "rank1_pca_evr2": float(evr[1])}}


@metric("rank1_pca_evr", family="direction", trajectory=True, outputs=("rank1_pca_evr1", "rank1_pca_evr2"),
        bounds=(0, 1), paper="EffOPD App. (rank-1 trajectory)")
def rank1_pca_evr():
    """Explained-variance ratio of the first two PCA components of the u₁(ΔW_t) trajectory (reported at the final step)."""
    return _Rank1PCA()
