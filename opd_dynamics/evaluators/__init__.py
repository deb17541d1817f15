"""Evaluators: score a model with one number, higher is better (the contract interventions and EffOPD use).

Built-ins: ``accuracy`` (verifier exact match, greedy or sampled), ``loglik`` (mean token log-likelihood of
reference solutions), ``kl`` (−KL to the teacher or the final checkpoint on fixed text)::

    ctx = EvalContext(task, tokenizer, references={"teacher": teacher_dir})
    ev = EvalSpec.parse("accuracy:split=validation").build(ctx)
    ev(model) -> float;  ev.name;  ev.higher_is_better
"""
from .registry import EvalContext, EvalSpec, Evaluator, EvaluatorInfo, available, evaluator, get
from .tasks import TaskSpec

__all__ = ["EvalContext", "EvalSpec", "Evaluator", "EvaluatorInfo", "TaskSpec", "available", "evaluator", "get"]
