"""Online early-subspace projection (Geometry of OPD, arXiv 2606.07082): confine training after t₀ to the top-K right
singular subspace of the early update.

At step t₀ (default 20 % of the run) the hook takes, for every selected matrix, V_K = the top-K right singular
vectors of ΔW_{t₀} = W_{t₀} − W₀ (K = 16). After every later optimizer step t it replaces the step the optimizer
just took, X = W_t − W_{t−1}, by its projection::

    W_t ← W_{t−1} + X V_K V_Kᵀ            (side="right"; side="left": U_K U_Kᵀ X)

so W_T = W_{t₀} + (W_T − W_{t₀}) V_K V_Kᵀ exactly: everything learnt after t₀ lies in the early subspace. The
offline counterpart (``opd-dynamics interventions subspace-projection``) projects a finished ΔW_T instead, with the
same :func:`~opd_dynamics.edits.top_subspace` and :func:`~opd_dynamics.edits.project`.

**Why the step and not the gradient.** Adam(W) divides every coordinate of the (momentum-averaged) gradient by its
own √v̂: a projected gradient G V Vᵀ comes out of the optimizer as (G V Vᵀ) ⊘ √v̂, which in general leaves the row
space of V_K, and the momentum still carries pre-t₀ gradients. Projecting the step itself is the only way the
weights stay in the subspace under Adam; the optimizer's moments are left as they are (they keep seeing the full
gradient), as the EffOPD hook leaves them too.

Parameters: the matrices of ``select`` (default ``kind=body``: attention and MLP projections), split into the
modules the analysis reports (a fused qkv tensor is projected per q/k/v part, a transposed (in, out) layout in the
analysis' orientation). The projection is computed in float64 and written back in the parameter's dtype.
Memory: one copy of the selected parameters (W₀ until t₀, then W_{t−1}) on ``anchor_device`` plus the bases
(n × K per module). Cost per step after t₀: one X V Vᵀ per module, O(mnK).

Used as

- a step hook of the reference trainer: ``train(..., step_hooks=[EarlySubspaceProjection(total_steps=64)])``
  (``run_arm(..., step_hooks=[...])`` likewise); the step's log gains ``projection_kept``;
- a ``transformers.TrainerCallback``: :class:`EarlySubspaceProjectionCallback` (HF ``Trainer``, TRL trainers).

>>> hook = EarlySubspaceProjection(at=4, k=16)          # from step 4 on
>>> hook.t0
4
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from transformers import TrainerCallback

from ..edits import project, top_subspace
from ..errors import OPDError
from ..naming import Part, parts
from ..select import Selector
from .geometry import _slice

SIDES = ("right", "left")


def resolve_t0(at: int | float | str, total_steps: int | None) -> int:
    """The first step whose subspace is used: an int step, a fraction (0.2) or ``"20%"`` of ``total_steps``.

    >>> resolve_t0("20%", 64), resolve_t0(0.25, 64), resolve_t0(5, None)
    (13, 16, 5)
    """
    if isinstance(at, str) and at.strip().endswith("%"):
        frac = float(at.strip()[:-1]) / 100
    elif isinstance(at, float):
        frac = at
    else:
        step = int(at)
        if step < 1:
            raise OPDError(f"projection step {at!r} is before the first update", hint="use a step ≥ 1 or a share like '20%'")
        return step
    if not 0 < frac < 1:
        raise OPDError(f"projection point {at!r} is not inside the run", hint="use a share between 0 and 100 %, e.g. '20%'")
    if total_steps is None:
        raise OPDError(f"projection point {at!r} is a share of the run, but the run length is unknown",
                       hint="pass total_steps= (the callback reads it from the trainer)")
    return max(1, round(frac * total_steps))


class EarlySubspaceProjection:
    """Project every optimizer step after t₀ onto the top-K singular subspace of ΔW_{t₀} (see the module doc).

    Args:
        at: t₀ as a step, a fraction or ``"20%"`` of ``total_steps``.
        k: subspace size K (modules whose ΔW_{t₀} has a lower numerical rank keep that many directions).
        side: ``right`` (X V Vᵀ, the row space: input directions) or ``left`` (U Uᵀ X).
        select: ``--select`` clauses choosing the matrices (default ``kind=body``).
        total_steps: the run length, needed when ``at`` is a share (the callback sets it).
        model: the model at W₀ (or a copy with the same parameter names); or call :meth:`start` before training.
        anchor_device: where the weight copy lives (default: beside each parameter).
    """

    def __init__(self, at: int | float | str = "20%", k: int = 16, *, side: str = "right",
                 select: Sequence[str] = ("kind=body",), total_steps: int | None = None,
                 model: torch.nn.Module | None = None, anchor_device: str | None = None):
        if side not in SIDES:
            raise OPDError(f"projection side {side!r} not understood", hint="use right (X V Vᵀ) or left (U Uᵀ X)")
        if int(k) < 1:
            raise OPDError(f"projection k={k} keeps nothing", hint="use k ≥ 1 (the paper: 16)")
        self.at, self.k, self.side, self.total_steps = at, int(k), side, total_steps
        self.selector = Selector.parse([*select, "matrix"])
        self.anchor_device = None if anchor_device is None else torch.device(anchor_device)
        self.t0: int | None = None if total_steps is None and not isinstance(at, int) else resolve_t0(at, total_steps)
        self.anchor: dict[str, torch.Tensor] | None = None   # W0 until t0, then the weights after the last step
        self.parts: dict[str, tuple[Part, ...]] = {}
        self.bases: dict[str, torch.Tensor] = {}             # module name -> V_K (n×K) or U_K (m×K), float64
        self.kept: dict[int, float] = {}                     # step -> share of ‖X‖_F² the projection kept
        if model is not None:
            self.start(model)

    @torch.no_grad()
    def start(self, model: torch.nn.Module, total_steps: int | None = None) -> None:
        """Remember W₀ of the selected matrices (call before the first optimizer step)."""
        if total_steps is not None:
            self.total_steps = total_steps
        self.t0 = resolve_t0(self.at, self.total_steps)
        config = model.config.to_dict() if hasattr(model, "config") else {}
        self.anchor, self.parts, self.bases, self.kept = {}, {}, {}, {}
        for name, p in model.named_parameters():
            if not p.is_floating_point() or p.ndim != 2:
                continue
            chosen = tuple(x for x in parts(name, tuple(p.shape), config) if self.selector.matches(x, p.ndim))
            if chosen:
                self.parts[name] = chosen
                self.anchor[name] = p.detach().to(self.anchor_device or p.device, copy=True)
        if not self.parts:
            raise OPDError("EarlySubspaceProjection: no parameter matches the selection",
                           hint=f"check select={self.selector.to_json()}")

    @property
    def active(self) -> bool:
        return bool(self.bases)

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, step: int) -> float | None:
        """At t₀ take the bases; after t₀ project the step just taken. Returns the share of ‖X‖² kept (None before)."""
        if self.anchor is None:
            raise OPDError("EarlySubspaceProjection has no W₀: start(model) was not called before training",
                           hint="pass model=W0 to EarlySubspaceProjection(...) or call hook.start(model) first")
        if step < self.t0:
            return None
        params = dict(model.named_parameters())
        if not self.bases:
            # at (or, if the hook joined late, first after) t0: bases from ΔW_{t0}; this step itself is not projected
            for name, chosen in self.parts.items():
                w, w0 = params[name].detach(), self.anchor[name]
                for part in chosen:
                    delta = _slice(w, part).double() - _slice(w0, part).to(w.device).double()
                    self.bases[part.name] = top_subspace(delta, self.k, self.side)
                self.anchor[name].copy_(w)
            return None
        kept, total = 0.0, 0.0
        for name, chosen in self.parts.items():
            p, prev = params[name], self.anchor[name]
            for part in chosen:
                now, before = _slice(p.data, part), _slice(prev, part).to(p.device)
                x = now.double() - before.double()
                px = project(x, self.bases[part.name], self.side)
                now.copy_((before.double() + px).to(now.dtype))
                kept += float((px * px).sum())
                total += float((x * x).sum())
            prev.copy_(p.detach())
        share = kept / total if total > 0 else math.nan
        self.kept[step] = share
        return share

    def __call__(self, model: torch.nn.Module, step: int, log: dict) -> None:
        """Step-hook form for the reference trainer (:func:`opd_dynamics.lab.train`)."""
        share = self.after_step(model, step)
        if share is not None:
            log["projection_kept"] = share


class EarlySubspaceProjectionCallback(TrainerCallback):
    """:class:`EarlySubspaceProjection` as a ``transformers.TrainerCallback`` (t₀ as a share of ``max_steps``).

    ``on_step_end`` runs after the optimizer step and before logging, evaluation and saving, so the projected
    weights are what the trainer evaluates, saves and continues from. At t₀ a ``projection_t0`` entry joins
    ``log_history``; every later logged step carries ``projection_kept`` (mean over the steps since the last log).

    >>> cb = EarlySubspaceProjectionCallback(at="20%", k=16)   # Trainer(..., callbacks=[cb])
    """

    def __init__(self, at: int | float | str = "20%", k: int = 16, **kwargs):
        self.projection = EarlySubspaceProjection(at, k, **kwargs)
        self._since_log: list[float] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.projection.start(model, total_steps=state.max_steps)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        was_active = self.projection.active
        share = self.projection.after_step(model, state.global_step)
        if self.projection.active and not was_active:
            state.log_history.append({"step": state.global_step, "projection_t0": self.projection.t0,
                                      "projection_k": self.projection.k, "projection_modules": len(self.projection.bases)})
        if share is not None:
            self._since_log.append(share)
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or not self._since_log:
            return
        kept = sum(self._since_log) / len(self._since_log)
        self._since_log = []
        logs["projection_kept"] = kept  # for the reporters (TensorBoard, W&B) that run after this callback
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1]["projection_kept"] = kept  # Trainer.log appended a copy of logs already
