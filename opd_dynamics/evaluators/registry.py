"""Evaluator plug-ins: decorated factories, a frozen ``EvalSpec`` that rebuilds any of them, did-you-mean lookup.

An evaluator factory takes an :class:`EvalContext` (the task, the tokenizer, reference-model directories) and its
settings as keyword arguments, and returns ``score(model) -> float``. :meth:`EvalSpec.build` wraps that into an
:class:`Evaluator`, **the contract the intervention engine and EffOPD use**::

    ev = EvalSpec.parse("accuracy:split=validation,limit=50").build(ctx)
    ev(model) -> float      # higher is better, always (``kl`` returns −KL)
    ev.name                 # "accuracy:limit=50,split=validation" (the table's ``metric``)
    ev.higher_is_better     # True for every built-in; a plug-in may say False
    ev.bounds, ev.unit      # facts for plots and reports

Scoring is deterministic: fixed examples in a fixed order, fixed batches, sampling from a generator re-seeded on
every call. Third-party packages register factories under the entry-point group ``opd_dynamics.evaluators``.

>>> spec = EvalSpec.parse("accuracy:samples=4,seed=1")
>>> spec, EvalSpec.from_json(spec.to_json()) == spec, spec.label
(EvalSpec(name='accuracy', args={'samples': 4, 'seed': 1}), True, 'accuracy:samples=4,seed=1')
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from ..plugins import FactoryFacts, PluginSpec, Registry

ENTRY_POINT_GROUP = "opd_dynamics.evaluators"


@dataclass(frozen=True)
class EvalContext:
    """What every evaluator may use: the task, the tokenizer, and directories of reference models by name
    (``teacher``, ``final`` = the run's last checkpoint). ``progress`` shows tqdm bars on stderr. A task with chat
    prompts is bound to the tokenizer here (``task.bind(tokenizer)``), so they render with its chat template."""

    task: Any
    tokenizer: Any
    references: dict[str, Path] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self):
        bind = getattr(self.task, "bind", None)
        if bind is not None and self.tokenizer is not None:
            bind(self.tokenizer)


@dataclass(frozen=True)
class EvaluatorInfo(FactoryFacts):
    name: str
    factory: Callable[..., Callable[[Any], float]]
    higher_is_better: bool = True
    bounds: tuple[float, float] | None = None
    unit: str = ""


EVALUATORS: Registry[EvaluatorInfo] = Registry("evaluator", ENTRY_POINT_GROUP)


def evaluator(name: str, *, higher_is_better: bool = True, bounds: tuple[float, float] | None = None,
              unit: str = "") -> Callable:
    """Register an evaluator factory ``factory(ctx, **settings) -> score(model)`` under ``name``."""

    def wrap(factory):
        factory.evaluator_info = EVALUATORS.add(EvaluatorInfo(name, factory, higher_is_better, bounds, unit))
        return factory

    return wrap


def available() -> dict[str, EvaluatorInfo]:
    """All registered evaluators (built-ins and entry points), by name."""
    return EVALUATORS.available()


def get(name: str) -> EvaluatorInfo:
    """Look an evaluator up; an unknown name is answered with the nearest valid names."""
    return EVALUATORS.get(name)


@dataclass(frozen=True)
class Evaluator:
    """A built evaluator: ``ev(model) -> float`` (no grad, eval mode, the model's train flag restored)."""

    name: str
    spec: "EvalSpec"
    score: Callable[[Any], float]
    higher_is_better: bool = True
    bounds: tuple[float, float] | None = None
    unit: str = ""
    details: dict = field(default_factory=dict)  # facts for the manifest, e.g. accuracy's checker and extraction

    def __call__(self, model) -> float:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return float(self.score(model))
        finally:
            model.train(was_training)


@dataclass(frozen=True)
class EvalSpec(PluginSpec):
    """An evaluator name plus its settings: enough to rebuild it from a manifest."""

    KIND: ClassVar[str] = "evaluator"

    __hash__ = PluginSpec.__hash__

    @property
    def label(self) -> str:
        """``name`` or ``name:k=v,…`` with sorted keys: the table's ``metric`` value."""
        if not self.args:
            return self.name
        return self.name + ":" + ",".join(f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                          for k, v in sorted(self.args.items()))

    @property
    def info(self) -> EvaluatorInfo:
        return get(self.name)

    LEADING: ClassVar[tuple] = (None,)  # the EvalContext

    def build(self, ctx: EvalContext) -> Evaluator:
        self.check()
        info = self.info
        score = info.factory(ctx, **self.args)
        return Evaluator(self.label, self, score, info.higher_is_better, info.bounds, info.unit,
                         dict(getattr(score, "details", {})))
