"""Online EffOPD: the search performed during a real training run, after every optimizer step that is a power of two.

:class:`EffOPD` holds the anchor weights (the extrapolated parameters at the previous power of two, *after* its
extrapolation — the authors' reference) and calls :func:`~.extrapolation.search_model` at t = 1, 2, 4, 8, …
It is used as

- a step hook of the reference trainer: ``train(..., step_hooks=[EffOPD(score, model)])`` (``hook(model, step, log)``),
- a ``transformers.TrainerCallback``: :class:`~.callback.EffOPDCallback` (HF Trainer, TRL trainers).

Cost per power of two: one evaluation of the unextrapolated weights plus at most ``len(ks)`` candidates (5 by
default); pass ``baseline_key`` to reuse a score the trainer already logged for this step and save one.
Memory: one copy of the extrapolated parameters (the anchor) on ``anchor_device`` plus Δ and W_{2ⁿ} during a
search.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..presets import resolve
from .extrapolation import DEFAULT_KS, SearchResult, extrapolated_names, is_power_of_two, search_model


class EffOPD:
    """State of an online EffOPD search across a training run."""

    def __init__(self, score: Callable[[torch.nn.Module], float], model: torch.nn.Module | None = None, *,
                 ks=DEFAULT_KS, rule: str | None = None, include_bias: bool = False, params: str | None = None,
                 preset: str | None = None, anchor_device: str = "cpu", max_step: int | None = None):
        """``rule`` and ``params`` default to ``preset``'s (``paper``: ``>=`` and weights only; ``authors``: ``>``
        and the released code's name match, see :mod:`opd_dynamics.presets`)."""
        chosen = resolve("effopd", preset, rule=rule, params=params or ("weights+bias" if include_bias else None))
        self.score, self.ks, self.rule, self.params = score, tuple(ks), chosen["rule"], chosen["params"]
        extrapolated_names([], params=self.params)  # a bad name fails here, before training
        self.anchor_device, self.max_step = torch.device(anchor_device), max_step
        self.anchor: dict[str, torch.Tensor] | None = None
        self.history: list[SearchResult] = []
        if model is not None:
            self.start(model)

    def _params(self, model) -> dict[str, torch.nn.Parameter]:
        params = dict(model.named_parameters())
        return {n: params[n] for n in extrapolated_names(params, params=self.params)}

    @torch.no_grad()
    def start(self, model: torch.nn.Module) -> None:
        """Remember W₀ (call before the first optimizer step)."""
        self.anchor = {n: p.detach().to(self.anchor_device, copy=True) for n, p in self._params(model).items()}

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, step: int) -> SearchResult | None:
        """Run the search if ``step`` is a power of two; the model is left at the accepted weights."""
        if self.anchor is None:
            raise RuntimeError("EffOPD.start(model) must be called before training starts")
        if not is_power_of_two(step) or (self.max_step is not None and step > self.max_step):
            return None
        params = self._params(model)
        delta = {n: p.detach().to(self.anchor_device) - self.anchor[n] for n, p in params.items()}
        was_training = model.training
        model.eval()
        try:
            result = search_model(model, delta, self.score, ks=self.ks, rule=self.rule, step=step)
        finally:
            model.train(was_training)
        self.anchor = {n: p.detach().to(self.anchor_device, copy=True) for n, p in params.items()}
        self.history.append(result)
        return result

    def __call__(self, model: torch.nn.Module, step: int, log: dict) -> None:
        """Step-hook form for the reference trainer: searches and adds ``effopd_*`` keys to the step's log."""
        result = self.after_step(model, step)
        if result is not None:
            log.update(log_entry(result))


def log_entry(result: SearchResult) -> dict:
    """What a search adds to a trainer's log history."""
    return {"effopd_accepted_k": result.accepted_k, "effopd_multiplier": result.multiplier,
            "effopd_scores": [round(s, 6) for s in result.scores], "effopd_best": result.best,
            "effopd_evaluations": len(result.scores)}
