"""Edits: pure functions of one module's (W₀, ΔW) -> new ΔW, as plug-ins rebuildable from a JSON spec.

The maths (float64, every matrix in the (out, in) orientation of :mod:`opd_dynamics.naming`):

- ``identity``       ΔW
- ``scale``          α·ΔW
- ``revert``         0 (the module goes back to W₀; the engine does not even read it)
- ``spectral``       ΔW = U Σ Vᵀ, keep the top-k% (or bottom-k%) singular components, k% of the numerical rank r
                     (numerical rank as in docs/metrics.md; ``basis="min_dim"`` counts min(m, n) instead); ``rescale``
                     multiplies the kept part by ‖ΔW‖_F / ‖kept‖_F (EffOPD Fig. 3)
- ``norm_rescale``   [1 + β(‖ΔW_T‖_F/‖ΔW_t‖_F − 1)]·ΔW_t, ΔW_T the update at step ``target`` (β = 1: the plain
                     rescale ΔW_t·‖ΔW_T‖_F/‖ΔW_t‖_F; EffOPD Fig. 4c)
- ``project``        X V_K V_Kᵀ, V_K the top-K right singular vectors of the update at step ``onto``
                     (``side="left"``: U_K U_Kᵀ X; Geometry of OPD's early-subspace projection)

An edit is a factory whose keyword arguments are its settings; the built edit is a callable
``apply(w0, delta, others) -> new_delta`` with ``needs`` (the other steps whose update it reads, as step
references: ``"final"``, ``"20%"`` of training or a step number; the engine passes them in ``others``). Other
packages add edits under the entry-point group ``opd_dynamics.edits`` (see ``docs/architecture.md``).

>>> spec = EditSpec.parse("spectral:percent=10,rescale=true")
>>> spec, EditSpec.from_json(spec.to_json()) == spec
(EditSpec(name='spectral', args={'percent': 10, 'rescale': True}), True)
>>> d = torch.diag(torch.tensor([3., 2., 1.], dtype=torch.float64))
>>> [round(x, 6) for x in spec.build()(None, d, {}).diagonal().tolist()]  # 1 of 3 components, rescaled to ‖ΔW‖_F
[3.741657, 0.0, 0.0]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch

from .errors import SelectionError
from .plugins import FactoryFacts, PluginSpec, Registry, check_settings
from .linalg import exact_svd, frobenius, gram_svd, numerical_rank

Tensor = torch.Tensor


# -- the maths: pure functions on float64 (out, in) matrices ---------------------------------------------------------
def scale(delta: Tensor, alpha: float) -> Tensor:
    """α·ΔW."""
    return delta * alpha


def spectral_keep(delta: Tensor, percent: float, which: str = "top", rescale: bool = False,
                  basis: str = "rank", rank: int | None = None) -> Tensor:
    """Keep ⌈percent/100 · r⌉ singular components of ΔW: the largest (``top``) or the smallest non-zero (``bottom``).

    r is the numerical rank (``basis="rank"``) or min(m, n) (``basis="min_dim"``). ``rank`` keeps an absolute
    number of components instead (capped at r; the EffOPD release's ``upd_rank.py --rank``). ``rescale`` restores
    ‖ΔW‖_F.

    >>> d = torch.diag(torch.tensor([4., 3.], dtype=torch.float64))
    >>> spectral_keep(d, 50, "bottom").diagonal().tolist(), spectral_keep(d, 100).diagonal().tolist()
    ([0.0, 3.0], [4.0, 3.0])
    """
    if which not in ("top", "bottom"):
        raise SelectionError(f"spectral edit: which={which!r} not understood", hint="use top or bottom")
    if basis not in ("rank", "min_dim"):
        raise SelectionError(f"spectral edit: basis={basis!r} not understood", hint="use rank or min_dim")
    if not 0 <= percent <= 100:
        raise SelectionError(f"spectral edit: percent={percent} outside [0, 100]", hint="give a percentage")
    if rank is not None and rank < 0:
        raise SelectionError(f"spectral edit: rank={rank} is negative", hint="give a number of components ≥ 0")
    u, s, v = exact_svd(delta)
    r = numerical_rank(s.cpu().numpy(), tuple(delta.shape)) if basis == "rank" else s.numel()
    k = min(r, math.ceil(percent / 100 * r - 1e-9) if rank is None else rank)
    if k <= 0:
        return torch.zeros_like(delta)
    idx = slice(0, k) if which == "top" else slice(r - k, r)
    kept = (u[:, idx] * s[idx]) @ v[:, idx].T
    if rescale:
        norm = frobenius(kept)
        if norm > 0:
            kept = kept * (frobenius(delta) / norm)
    return kept


def norm_rescale(delta_t: Tensor, target_norm: float, beta: float = 1.0) -> Tensor:
    """[1 + β(‖ΔW_T‖/‖ΔW_t‖ − 1)]·ΔW_t (β = 1 gives ‖result‖ = ‖ΔW_T‖); a zero ΔW_t stays zero.

    >>> norm_rescale(torch.tensor([3., 4.], dtype=torch.float64), 10.0).tolist()
    [6.0, 8.0]
    """
    norm = frobenius(delta_t)
    if norm == 0:
        return delta_t.clone()
    return delta_t * (1 + beta * (float(target_norm) / norm - 1))


def top_subspace(delta: Tensor, k: int, side: str = "right") -> Tensor:
    """Orthonormal top-k right (V_K, n×k) or left (U_K, m×k) singular vectors of ΔW (float64 Gram, see linalg)."""
    u, s, v = gram_svd(delta, k)
    basis = v if side == "right" else u
    r = numerical_rank(s.cpu().numpy(), tuple(delta.shape))
    return basis[:, :min(k, r)]  # directions with σ ≈ 0 are noise: leave them out


def project(x: Tensor, basis: Tensor, side: str = "right") -> Tensor:
    """X V Vᵀ (``side="right"``, V n×k) or U Uᵀ X (``side="left"``), ``basis`` with orthonormal columns.

    >>> x = torch.tensor([[1., 2.], [3., 4.]], dtype=torch.float64)
    >>> project(x, torch.tensor([[1.], [0.]], dtype=torch.float64)).tolist()
    [[1.0, 0.0], [3.0, 0.0]]
    """
    if side == "right":
        return (x @ basis) @ basis.T
    return basis @ (basis.T @ x)


# -- the plug-in registry --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EditInfo(FactoryFacts):
    """Facts about an edit: whether it reads ΔW, needs a matrix, and its one-line summary."""

    name: str
    factory: Callable[..., Any]
    reads_delta: bool = True
    matrix: bool = False


ENTRY_POINT_GROUP = "opd_dynamics.edits"
EDITS: Registry[EditInfo] = Registry("edit", ENTRY_POINT_GROUP)


@dataclass(frozen=True)
class BuiltEdit:
    """``apply(w0, delta, others) -> new ΔW``; ``needs``: step references whose updates ``others`` must hold."""

    info: EditInfo
    fn: Callable[[Tensor | None, Tensor, dict[str, Tensor]], Tensor]
    needs: tuple[str, ...] = ()

    def __call__(self, w0, delta, others):
        return self.fn(w0, delta, others)


def edit(name: str, *, reads_delta: bool = True, matrix: bool = False) -> Callable:
    """Register an edit factory under ``name``; the factory returns ``fn`` or ``(fn, needs)``."""

    def wrap(factory):
        factory.edit_info = EDITS.add(EditInfo(name, factory, reads_delta, matrix))
        return factory

    return wrap


def get(name: str) -> EditInfo:
    """Look an edit up; an unknown name is answered with the nearest valid names."""
    return EDITS.get(name)


@dataclass(frozen=True)
class EditSpec(PluginSpec):
    """An edit name plus its settings: enough to rebuild it from a manifest."""

    KIND: ClassVar[str] = "edit"

    __hash__ = PluginSpec.__hash__

    @property
    def info(self) -> EditInfo:
        return get(self.name)

    def build(self) -> BuiltEdit:
        info = self.info
        check_settings(info.factory, self.args, self.name, "edit")
        out = info.factory(**self.args)
        fn, needs = out if isinstance(out, tuple) else (out, ())
        return BuiltEdit(info, fn, tuple(str(n) for n in needs))


# -- built-in edits --------------------------------------------------------------------------------------------------
@edit("identity")
def identity_edit():
    """Keep ΔW: the module takes the source checkpoint's weights."""
    return lambda w0, d, others: d


@edit("scale")
def scale_edit(alpha: float = 1.0):
    """α·ΔW (W₀ + α·ΔW; EffOPD Fig. 1a)."""
    return lambda w0, d, others: scale(d, alpha)


@edit("revert", reads_delta=False)
def revert_edit():
    """Put the module back to W₀ (ΔW = 0)."""
    return lambda w0, d, others: torch.zeros_like(d)


@edit("spectral", matrix=True)
def spectral_edit(percent: float = 10.0, which: Literal["top", "bottom"] = "top", rescale: bool = False,
                  basis: Literal["rank", "min_dim"] = "rank", rank: int | None = None):
    """Keep the top-k% / bottom-k% singular components of ΔW (or an absolute ``rank`` of them), optionally rescaled
    to ‖ΔW‖_F (EffOPD Fig. 3)."""
    spectral_keep(torch.eye(2, dtype=torch.float64), percent, which, rescale, basis, rank)  # bad settings fail at build
    return lambda w0, d, others: spectral_keep(d, percent, which, rescale, basis, rank)


@edit("norm_rescale")
def norm_rescale_edit(beta: float = 1.0, target: str = "final"):
    """[1 + β(‖ΔW_T‖_F/‖ΔW_t‖_F − 1)]·ΔW_t, ΔW_T the update at step ``target`` (EffOPD Fig. 4c)."""
    target = str(target)

    def fn(w0, d, others):
        return norm_rescale(d, frobenius(others[target]), beta)

    return fn, (target,)


@edit("project", matrix=True)
def project_edit(onto: str = "20%", k: int = 16, side: Literal["left", "right"] = "right"):
    """X V_K V_Kᵀ onto the top-K right (or left) singular subspace of the update at step ``onto`` (Geometry of OPD)."""
    if side not in ("left", "right"):
        raise SelectionError(f"project edit: side={side!r} not understood", hint="use right or left")
    onto = str(onto)

    def fn(w0, d, others):
        return project(d, top_subspace(others[onto], k, side), side)

    return fn, (onto,)


def available() -> dict[str, EditInfo]:
    """All registered edits (the built-ins above and entry points), by name."""
    return EDITS.available()
