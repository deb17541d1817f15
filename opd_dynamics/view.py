"""What a metric sees: one module at one step (W_ref, ΔW and a shared, lazily computed spectrum).

One :class:`Spectrum` per (module, step) feeds every spectral metric: the Gram matrix and its eigenvalues
are computed at most once, and top-k vectors are cached per (k, side), so no metric recomputes a
decomposition. ``module_cache`` lives for the whole trajectory of one module (e.g. W₀'s SVD, computed once
per module for the whole run); ``step_cache`` lives for one (module, step) (e.g. W_t's SVD, shared by several
metrics).

A factored update (LoRA: ΔW = s·B·A, :class:`opd_dynamics.linalg.Factored`) gives a spectrum straight from the
factors (QR + an r×r SVD: exact, and free of the m×n matrix); ``view.delta`` is then materialised only if a
metric reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np
import torch

from . import linalg
from .naming import Part


class Spectrum:
    """Lazy singular values and top singular vectors of one matrix X (m×n)."""

    #: vectors are computed at least this many at a time, so metrics asking for k = 1, 16 and 20 share one
    #: subspace iteration
    MIN_VECTORS = 32

    def __init__(self, x: torch.Tensor | linalg.Factored, method: str = "gram"):
        self._x = x
        self.shape = tuple(x.shape)
        self.method = method
        self._vectors: dict[str, torch.Tensor] = {}  # side -> top vectors (dim × kk)
        self._top: tuple[torch.Tensor, torch.Tensor] | None = None  # Gram-side vectors and σ
        self.decompositions = 0  # how many spectra were computed (tests: at most one)
        self.factored = isinstance(x, linalg.Factored)

    @cached_property
    def _factored_svd(self) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        self.decompositions += 1
        u, s, v = self._x.svd()
        return u, s.cpu().numpy(), v

    @cached_property
    def _gram(self) -> tuple[torch.Tensor, str]:
        return linalg.gram(self._x)

    @cached_property
    def sigma_all(self) -> np.ndarray:
        """All min(m, n) singular values, descending, float64."""
        if self.factored:  # exact; the zeros beyond the factors' rank are exact too
            s = self._factored_svd[1]
            return np.concatenate([s, np.zeros(max(0, min(self.shape) - s.size))])[: min(self.shape)]
        self.decompositions += 1
        if self.method == "gram":
            return linalg.eigh_spectrum(self._gram[0])
        return linalg.singular_values(self._x, self.method)

    @cached_property
    def frobenius(self) -> float:
        """‖X‖_F = sqrt(Σσᵢ²) of these σ. The spectral ratios (σ₁/‖X‖_F, ‖X‖_F²/σ₁²) divide by it rather than by the
        direct sum :func:`opd_dynamics.linalg.frobenius`, so σ₁ ≤ ‖X‖_F holds exactly; the two agree to ~ε₆₄."""
        return float(np.sqrt((self.sigma_all ** 2).sum()))

    @cached_property
    def gram_frobenius(self) -> float:
        """‖X‖_F = sqrt(trace(G)) of the float64 Gram: the same float64 sum of squares as
        :func:`opd_dynamics.linalg.frobenius`, free once the Gram exists (no third pass over X)."""
        return float(torch.diagonal(self._gram[0]).sum().sqrt())

    @cached_property
    def rank(self) -> int:
        """Numerical rank r: count of σᵢ > σ₁·max(m, n)·ε₃₂ (docs/metrics.md)."""
        return linalg.numerical_rank(self.sigma_all, self.shape)

    @cached_property
    def sigma(self) -> np.ndarray:
        """σ₁ ≥ … ≥ σ_r > 0: the singular values up to the numerical rank."""
        return self.sigma_all[: self.rank]

    def vectors(self, k: int, side: str = "left") -> torch.Tensor:
        """Top-k singular vectors on ``side`` ("left": columns of U, "right": of V), float64 (dim×k)."""
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}")
        k = min(k, min(self.shape))
        if self.factored:  # beyond the factors' rank there are no meaningful vectors: at most r columns
            u, _, v = self._factored_svd
            return (u if side == "left" else v)[:, :k]
        have = self._vectors.get(side)
        if have is None or have.shape[1] < k:
            if self._x is None:
                raise RuntimeError("spectrum released before its vectors were requested")
            g, gside = self._gram
            if self._top is None or self._top[0].shape[1] < k:
                kk = min(max(k, self.MIN_VECTORS), min(self.shape))
                self._top = linalg.gram_top_vectors(g, kk)
                self.decompositions += 1
                self._vectors = {gside: self._top[0]}
            if side not in self._vectors:
                vec, sig = self._top
                self._vectors[side] = linalg.other_side(self._x, vec, sig, gside)
            have = self._vectors[side]
        return have[:, :k]


@dataclass
class ModuleView:
    """One module (``part``) of one run at ``step``, measured against ``ref_step``.

    ``delta`` is ΔW = W_step − W_ref in float32, (out, in) orientation; the engine may pass a
    :class:`~opd_dynamics.linalg.Factored` instead (LoRA), which ``factored`` then holds and ``delta`` becomes on
    first use. ``before`` is W_ref (float32, computed on first use). ``after`` is W_step exactly as stored, upcast
    (only when the engine was asked to keep it, see metric ``needs_after``). ``base_raw`` is W₀ as stored, whatever
    the reference: it is ``ref_raw`` when ref_step = 0, else read through ``base_fn`` (``against=prev`` or a fixed
    step) — metrics defined against W₀ (Geometry of OPD arXiv 2606.07082 App. C.3) use it.
    """

    run: str
    part: Part
    step: int
    ref_step: int
    delta: torch.Tensor
    ref_raw: torch.Tensor
    after_raw: torch.Tensor | None = None
    spectrum_method: str = "gram"
    module_cache: dict[str, Any] = field(default_factory=dict)
    base_fn: Callable[[], torch.Tensor] | None = None
    step_cache: dict[str, Any] = field(default_factory=dict)
    norm_from_gram: bool = False  # the engine sets it when a spectral metric will form the Gram anyway
    factored: linalg.Factored | None = field(default=None, init=False)

    def __post_init__(self):
        if isinstance(self.delta, linalg.Factored):
            self.factored = self.__dict__.pop("delta")  # `delta` is rebuilt on demand by __getattr__

    def __getattr__(self, name: str):  # only reached when `delta` is not materialised yet
        factored = self.__dict__.get("factored")
        if name == "delta" and factored is not None:
            self.__dict__["delta"] = dense = factored.dense(torch.float32)
            return dense
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def is_matrix(self) -> bool:
        return self.factored is not None or self.delta.ndim == 2

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.factored.shape if self.factored is not None else self.delta.shape)

    @cached_property
    def delta_norm(self) -> float:
        """‖ΔW‖_F in float64: :func:`opd_dynamics.linalg.frobenius`, or from the factors' σ when factored (without
        forming ΔW). Every ‖ΔW‖_F of a metric is this one."""
        if self.factored is not None:
            return self.spectrum.frobenius
        if self.norm_from_gram and self.spectrum_method == "gram" and self.delta.ndim == 2:
            return self.spectrum.gram_frobenius
        return linalg.frobenius(self.delta)

    @property
    def base_raw(self) -> torch.Tensor:
        """W₀ (the run's base) as stored, for metrics defined against W₀ whatever ``against`` is."""
        if self.ref_step == 0:
            return self.ref_raw
        if self.base_fn is None:
            raise RuntimeError("metric needs W₀ but the engine gave no way to read it")
        return self.base_fn()

    @cached_property
    def before(self) -> torch.Tensor:
        return self.ref_raw.to(torch.float32)

    @cached_property
    def after(self) -> torch.Tensor:
        if self.after_raw is None:
            raise RuntimeError("metric needs W_t but the engine did not keep it (declare needs_after=True)")
        return self.after_raw.to(torch.float32)

    @cached_property
    def spectrum(self) -> Spectrum:
        return Spectrum(self.factored if self.factored is not None else self.delta, self.spectrum_method)

    def cached(self, key: str, compute):
        """Per-module cache shared by all steps (e.g. ‖W₀‖ or W₀'s SVD): compute once, reuse."""
        if key not in self.module_cache:
            self.module_cache[key] = compute()
        return self.module_cache[key]

    def cached_step(self, key: str, compute):
        """Per-(module, step) cache shared by the metrics of this view (e.g. W_t's SVD): compute once, reuse."""
        if key not in self.step_cache:
            self.step_cache[key] = compute()
        return self.step_cache[key]
