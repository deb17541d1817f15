"""How the update's direction evolves (EffOPD Fig. 4b, Geometry of OPD): metrics with memory across steps.

Each collects a small state per step (top-k singular vectors, k × dim floats) and is finalised once the
module's trajectory is done. "Final" is the last step analysed for the run. Singular vectors have arbitrary
sign, so they are compared with |cos| or projectors, never with raw dot products. k is capped at
min(k, r_t, r_T) — vectors beyond an update's numerical rank are arbitrary.

Every similarity comes with its chance level as its own output row (``<name>_chance``): what the same k and
dimension d give for a uniformly random subspace (or random unit vectors), so 0.5 can be told from noise.

- subspace similarity ‖AᵀB‖_F²/K with B uniformly random: E = K/d exactly (each column b of B has
  E‖Aᵀb‖² = K/d);
- paired |cos| of two independent uniform unit vectors in d dimensions:
  E|cos| = Γ(d/2) / (√π · Γ((d+1)/2)) ≈ √(2/(πd)) (exact, :func:`paired_chance`).
"""
from __future__ import annotations

from typing import Literal

import math

import numpy as np

from .registry import Output, metric


def paired_alignment(a: np.ndarray, b: np.ndarray) -> float:
    """(1/K) Σᵢ |⟨aᵢ, bᵢ⟩| for column-paired unit vectors.

    >>> paired_alignment(np.eye(3)[:, :2], -np.eye(3)[:, :2])
    1.0
    """
    return float(np.abs((a * b).sum(axis=0)).mean())


def paired_chance(d: int) -> float:
    """E|⟨a, b⟩| for independent uniform unit vectors a, b in d dimensions: Γ(d/2) / (√π Γ((d+1)/2)).

    (⟨a, b⟩ has the density of one coordinate of a uniform unit vector; for large d ≈ √(2/(πd)).)

    >>> round(paired_chance(2), 12) == round(2 / math.pi, 12), paired_chance(3)
    (True, 0.5)
    """
    if d < 1:
        return math.nan
    return float(math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi))


def subspace_chance(k: int, d: int) -> float:
    """E ‖AᵀB‖_F² / K for a fixed K-dim A and a uniformly random K-dim B in d dimensions: K / d.

    >>> subspace_chance(20, 64)
    0.3125
    """
    return min(k, d) / d if d > 0 else math.nan


def subspace_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """‖AᵀB‖_F² / K: the mean cos² of the principal angles between two K-dim subspaces (orthonormal A, B).

    >>> subspace_similarity(np.eye(3)[:, :2], np.eye(3)[:, [1, 0]])
    1.0
    """
    return float(((a.T @ b) ** 2).sum() / a.shape[1])


class _ToFinal:
    """Collect top-k vectors per step; compare each step with the final one."""

    def __init__(self, k: int, side: str, mode: str, name: str):
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        if mode not in ("paired", "subspace"):
            raise ValueError(f"mode must be 'paired' or 'subspace', got {mode!r}")
        self.k, self.side, self.mode, self.name = k, side, mode, name

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
                out[step] = {self.name: math.nan, self.name + "_chance": math.nan}
                continue
            k = min(vec.shape[1], final.shape[1])
            a, b = vec[:, :k], final[:, :k]
            d = a.shape[0]
            if self.mode == "paired":
                out[step] = {self.name: paired_alignment(a, b), self.name + "_chance": paired_chance(d)}
            else:
                out[step] = {self.name: subspace_similarity(a, b), self.name + "_chance": subspace_chance(k, d)}
        return out


@metric("alignment_to_final", family="direction", trajectory=True, bounds=(0, 1), unit="%", paper="EffOPD Fig. 4b",
        outputs=(Output("alignment_to_final", r"alignment to final $\Delta W_T$ (%)", "%", (0, 1)),
                 "alignment_to_final_chance"))
def alignment_to_final(k: int = 20, side: Literal["left", "right"] = "left",
                       mode: Literal["paired", "subspace"] = "subspace"):
    """Subspace similarity ‖U_k(t)ᵀU_k(T)‖_F²/k of ΔW_t's and ΔW_T's top-k singular subspaces (chance k/d beside it).

    EffOPD (arXiv 2605.11739, abstract and Fig. 4b) claims that OPD's *dominant subspace* aligns with the final
    update subspace early, so the default is the subspace notion. ``mode=paired`` is the mean |cos| of the i-th
    with the i-th singular vector, i = 1..k: basis-sensitive where singular values are close (near-equal σ
    rotate their vectors freely), chance Γ(d/2)/(√π Γ((d+1)/2)) ≈ √(2/(πd)).
    """
    return _ToFinal(k, side, mode, "alignment_to_final")


@metric("subspace_locking", family="direction", trajectory=True, bounds=(0, 1), unit="%",
        paper="Geometry of OPD §4",
        outputs=(Output("subspace_locking", r"subspace locking Sim$_K(t,T)$ (%)", "%", (0, 1)),
                 "subspace_locking_chance"))
def subspace_locking(k: int = 16):
    """Sim_K(t, T) = ‖V_K(t)ᵀ V_K(T)‖_F² / K over the top-K right singular vectors of ΔW (chance K/n beside it)."""
    return _ToFinal(k, "right", "subspace", "subspace_locking")


MOTION_TOL = 1e-7


class _Rank1PCA:
    def __init__(self, standardize: bool = False):
        self.standardize = standardize

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
        x = np.stack(rows).astype(np.float64)
        x = x - x.mean(axis=0)
        # u₁ that does not move (RMS displacement below ~1e-7, the Gram path's vector accuracy) has no principal
        # direction of motion: its "EVR" would be the PCA of rounding noise, so report NaN
        moved = float((x ** 2).sum()) > len(rows) * MOTION_TOL ** 2
        if self.standardize:  # sklearn's StandardScaler: unit variance per coordinate (ddof 0; constant ones kept)
            sd = x.std(axis=0)
            x = x / np.where(sd > 0, sd, 1.0)
        sv = np.linalg.svd(x, compute_uv=False) ** 2
        evr = sv / sv.sum() if moved else np.full_like(sv, math.nan)
        return {last: {"rank1_pca_evr1": float(evr[0]), "rank1_pca_evr2": float(evr[1])}}


@metric("rank1_pca_evr", family="direction", trajectory=True, paper="EffOPD App. (rank-1 trajectory)",
        outputs=(Output("rank1_pca_evr1", "EVR of PC1 (%)", "%", (0, 1)), Output("rank1_pca_evr2", "EVR of PC2 (%)", "%", (0, 1))))
def rank1_pca_evr(standardize: bool = False):
    """Explained-variance ratio of the first two PCA components of the u₁(ΔW_t) trajectory (reported at the final step).

    ``standardize=True`` scales every coordinate of u₁ to unit variance across steps first, as the EffOPD release's
    ``StandardScaler`` does (the ``authors`` preset; docs/fidelity.md).
    """
    return _Rank1PCA(standardize)
