"""Where the update lands relative to W₀'s own geometry (PNT; Geometry of OPD App. C.3).

These compare the *weights* W₀ and W_t (not ΔW's spectrum), so they are defined against W₀ whatever the
engine's ``against`` is (``view.base_raw``); ``reference="ref"`` measures against the engine's W_ref instead
(e.g. W_{t'} with ``against=prev``).

Decompositions (Geometry of OPD arXiv 2606.07082 App. C.3; float64, on the CPU, because W₀ and W_t are nearly identical):

- W₀: one thin SVD per module for the whole run (``view.cached``), shared by ``principal_angles``,
  ``spectral_shift`` and the rank-k reconstruction behind ``principal_mask_overlap``.
- W_t: one thin SVD per (module, step) (``view.cached_step``), shared by ``principal_angles`` and
  ``spectral_shift``.

``method="svd"`` (default) is LAPACK's float64 SVD; ``method="gram"`` takes the float64 Gram + ``eigh`` path
(:func:`opd_dynamics.linalg.gram_svd`, 3–6× faster, errors stated there and tested against ``svd``).
Memory: the cached W₀ factors are (m + n)·min(m, n) float64 values per module.
"""
from __future__ import annotations

from typing import Literal

import math

import numpy as np
import torch

from .. import linalg
from .registry import Output, metric
from .sparsity import ATOL_MUKHERJEE, ETA, changed_mask

METHODS = ("svd", "gram")
REFERENCES = ("base", "ref")
Method = Literal["svd", "gram"]
Reference = Literal["base", "ref"]


def _check(method: str, reference: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")


def _decompose(x: torch.Tensor, method: str):
    if method == "gram":
        return linalg.gram_svd(x, min(x.shape), cpu=True)
    return linalg.exact_svd(x, cpu=True)


def _reference(view, reference: str) -> tuple[str, torch.Tensor | None]:
    if reference == "base" or view.ref_step == 0:
        return "base", None
    return f"step{view.ref_step}", view.ref_raw


def reference_svd(view, method: str = "svd", reference: str = "base"):
    """(U, σ, V) of W₀ (or of W_ref), float64 on the CPU, computed once per module for the whole run."""
    label, x = _reference(view, reference)
    return view.cached(f"svd64/{method}@{label}", lambda: _decompose(view.base_raw if x is None else x, method))


def current_svd(view, method: str = "svd"):
    """(U, σ, V) of W_t as stored, float64 on the CPU, computed once per (module, step)."""
    return view.cached_step(f"svd64/{method}@t", lambda: _decompose(view.after_raw, method))


def angles_degrees(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max, mean) principal angle in degrees between span(A) and span(B).

    >>> a, b = torch.eye(3)[:, :1], torch.tensor([[1.], [1.], [0.]]) / 2 ** 0.5
    >>> [round(x, 4) for x in angles_degrees(a, b)]
    [45.0, 45.0]
    """
    theta = np.degrees(linalg.principal_angles(a, b))
    return float(theta.max()), float(theta.mean())


@metric("principal_angles", family="principal", needs_after=True,
        outputs=tuple(Output(f"principal_angle_{side}_{stat}", f"{stat} principal angle, {side} (°)", "°", (0, 90))
                      for side in ("left", "right") for stat in ("max", "mean")),
        paper="PNT; Geometry of OPD App. C.3")
def principal_angles(k: int = 512, method: Method = "svd", reference: Reference = "base"):
    """Max and mean principal angle (degrees) between the top-k left and right singular subspaces of W₀ and W_t.

    k is capped at min(m, n). A side whose top-k subspace is then its whole space (k = m for the left side,
    k = n for the right) cannot rotate: it reports NaN, not a trivially exact 0°.
    """
    _check(method, reference)

    def compute(view):
        u0, _, v0 = reference_svd(view, method, reference)
        ut, _, vt = current_svd(view, method)
        m, n = view.shape
        kk = min(k, m, n)
        nan = (math.nan, math.nan)
        lmax, lmean = angles_degrees(u0[:, :kk], ut[:, :kk]) if kk < m else nan
        rmax, rmean = angles_degrees(v0[:, :kk], vt[:, :kk]) if kk < n else nan
        return {"principal_angle_left_max": lmax, "principal_angle_left_mean": lmean,
                "principal_angle_right_max": rmax, "principal_angle_right_mean": rmean}

    return compute


def normalized_spectral_shift(s0: np.ndarray, st: np.ndarray) -> float:
    """‖σ(W_t) − σ(W₀)‖₂ / ‖σ(W₀)‖₂ (NaN when W₀ = 0).

    >>> normalized_spectral_shift(np.array([3.0, 4.0]), np.array([3.0, 5.0]))
    0.2
    """
    d = float(np.linalg.norm(s0))
    return float(np.linalg.norm(st - s0)) / d if d > 0 else math.nan


@metric("spectral_shift", family="principal", needs_after=True, bounds=(0, math.inf),
        label=r"spectral shift $\|\sigma(W_t)-\sigma(W_0)\|/\|\sigma(W_0)\|$",
        paper="PNT (normalised spectral shift)")
def spectral_shift(method: Method = "svd", reference: Reference = "base"):
    """NSS = ‖σ(W_t) − σ(W₀)‖₂ / ‖σ(W₀)‖₂ over all min(m, n) singular values, float64."""
    _check(method, reference)

    def compute(view):
        s0 = reference_svd(view, method, reference)[1].numpy()
        st = current_svd(view, method)[1].numpy()
        return normalized_spectral_shift(s0, st)

    return compute


def top_fraction_mask(x: torch.Tensor, alpha: float, *, largest: bool) -> torch.Tensor:
    """Mask of the ⌈α·N⌉ largest (or smallest) entries of x; ties at the threshold are all included.

    >>> top_fraction_mask(torch.tensor([[1., 4.], [3., 2.]]), 0.5, largest=True).tolist()
    [[False, True], [True, False]]
    """
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    flat = x.reshape(-1)
    n = flat.numel()
    count = min(n, max(1, math.ceil(alpha * n - 1e-9)))
    if largest:
        thr = torch.kthvalue(flat, n - count + 1).values
        return x >= thr
    thr = torch.kthvalue(flat, count).values
    return x <= thr


def overlap(mask: torch.Tensor, upd: torch.Tensor) -> float:
    """|M ∩ M_upd| / |M_upd| (NaN when nothing changed).

    >>> overlap(torch.tensor([True, False, True]), torch.tensor([True, True, False]))
    0.5
    """
    n = int(upd.sum())
    return float((mask & upd).sum()) / n if n else math.nan


def _masked(view, key: str, fn):
    """A W₀-derived mask, kept on ΔW's device for the whole run."""
    return view.cached(key, lambda: fn().to(view.ref_raw.device))


@metric("principal_mask_overlap", family="principal", needs_after=True,
        outputs=("principal_mask_overlap", "principal_mask_overlap_chance"), bounds=(0, 1),
        paper="PNT; Geometry of OPD App. C.3")
def principal_mask_overlap(k: int = 64, alpha: float = 0.5, method: Method = "svd", tolerance: Tolerance = "relative",
                           eta: float = ETA, atol: float = ATOL_MUKHERJEE):
    """|M_princ ∩ M_upd| / |M_upd|: M_princ = top-α entries of |rank-k reconstruction of W₀|, M_upd = bf16 changes.

    The chance level ``principal_mask_overlap_chance`` = |M_princ| / N (α, up to ties).
    """
    _check(method, "base")

    def compute(view):
        def princ():
            u, s, v = reference_svd(view, method)
            kk = min(k, s.numel())
            return top_fraction_mask(((u[:, :kk] * s[:kk]) @ v[:, :kk].T).abs_(), alpha, largest=True)

        mask = _masked(view, f"mask_princ/{method}/{k}/{alpha}", princ)
        upd = changed_mask(view, tolerance, eta, atol)
        return {"principal_mask_overlap": overlap(mask, upd),
                "principal_mask_overlap_chance": float(mask.sum()) / mask.numel()}

    return compute


@metric("low_magnitude_overlap", family="principal", needs_after=True,
        outputs=("low_magnitude_overlap", "low_magnitude_overlap_chance"), bounds=(0, 1),
        paper="PNT; Geometry of OPD App. C.3")
def low_magnitude_overlap(alpha: float = 0.5, tolerance: Tolerance = "relative", eta: float = ETA,
                          atol: float = ATOL_MUKHERJEE):
    """|M_low ∩ M_upd| / |M_upd|: M_low = bottom-α entries of |W₀|, M_upd = bf16 changes; chance level |M_low| / N."""

    def compute(view):
        mask = _masked(view, f"mask_low/{alpha}",
                       lambda: top_fraction_mask(view.base_raw.to(torch.float32).abs(), alpha, largest=False))
        upd = changed_mask(view, tolerance, eta, atol)
        return {"low_magnitude_overlap": overlap(mask, upd),
                "low_magnitude_overlap_chance": float(mask.sum()) / mask.numel()}

    return compute
