"""Evaluators: score a model with one number, higher is better (the contract interventions and EffOPD use).

Built-ins: ``accuracy`` (verifier exact match, greedy or sampled), ``loglik`` (mean token log-likelihood of
reference solutions), ``kl`` (−KL to the teacher or the final checkpoint on fixed text)::

    ctx = EvalContext(task, tokenizer, references={"teacher": teacher_dir})
    ev = EvalSpec.parse("accuracy:split=validation").build(ctx)
    ev(model) -> float;  ev.name;  ev.higher_is_better

Importing this package registers the built-ins (one file each); :mod:`.registry` never imports them back. Other
packages add evaluators under the entry-point group ``opd_dynamics.evaluators`` (see ``docs/architecture.md``).
"""
from .registry import EVALUATORS, EvalContext, EvalSpec, Evaluator, EvaluatorInfo, available, evaluator, get
from .tasks import TaskSpec
from . import accuracy, kl, loglik  # noqa: F401,E402  (built-ins register themselves)

__all__ = ["EVALUATORS", "EvalContext", "EvalSpec", "Evaluator", "EvaluatorInfo", "TaskSpec", "available",
           "evaluator", "get"]
