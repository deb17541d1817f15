"""EffOPD as a ``transformers.TrainerCallback``: plugs into HF ``Trainer`` and TRL trainers unchanged.

>>> cb = EffOPDCallback(lambda model: 0.0)   # score(model) -> float, higher is better
>>> # Trainer(..., callbacks=[cb]); every search lands in trainer_state.json's log_history

Or score with the same task and evaluator options as ``opd-dynamics interventions`` (a chat model's validation
prompts, rendered with the trainer's own tokenizer and chat template)::

    EffOPDCallback(task="val.jsonl", evaluator="accuracy:split=validation,limit=50,checker=math",
                   task_options={"answer_regex": r"####\\s*(\\S+)"})

The evaluator is built at ``on_train_begin`` from the trainer's ``processing_class`` (or ``tokenizer=``).

``on_step_end`` runs after the optimizer step and before logging, evaluation and saving, so the extrapolated
weights are what the trainer evaluates, saves and continues from.
"""
from __future__ import annotations

from typing import Any, Callable

from transformers import TrainerCallback

from ..errors import OPDError
from .online import EffOPD, log_entry

DEFAULT_EVALUATOR = "accuracy:split=validation,limit=50"


class EffOPDCallback(TrainerCallback):
    """Run the EffOPD search at every power-of-two global step of a ``transformers.Trainer``.

    Args:
        score: ``score(model) -> float`` (higher is better); or None and give ``task``.
        task: ``FILE[:SPLIT]``, ``dataset:PATH_OR_NAME:split``, ``lab:PRESET``, a TaskSpec or a task object.
        evaluator: an evaluator spec (:mod:`opd_dynamics.evaluators`), default ``accuracy:split=validation,limit=50``.
        task_options: TaskSpec options (columns, answer_regex, chat_template, limit, stop, max_new_tokens).
        tokenizer: default: the trainer's ``processing_class``.
        **kwargs: :class:`~opd_dynamics.effopd.online.EffOPD`'s (``ks``, ``rule``, ``params``, ``preset``, …).
    """

    def __init__(self, score: Callable | None = None, *, task: Any = None, evaluator: str = DEFAULT_EVALUATOR,
                 task_options: dict | None = None, tokenizer: Any = None, seed: int = 0, **kwargs):
        if (score is None) == (task is None):
            raise OPDError("EffOPDCallback needs a score function or a task (not both)",
                           hint="EffOPDCallback(score) or EffOPDCallback(task='val.jsonl', evaluator='accuracy')")
        self._task, self._tokenizer, self.evaluator = task, tokenizer, None
        if task is not None:
            from ..evaluators import EvalSpec, TaskSpec

            self._spec = EvalSpec.parse(evaluator)
            self._spec.check()
            if isinstance(task, str):
                task = TaskSpec.parse(task, seed=seed, **(task_options or {}))
            self._task = task.build() if isinstance(task, TaskSpec) else task  # bad rows fail before training
        self.effopd = EffOPD(score if score is not None else self._score, **kwargs)

    def _score(self, model) -> float:
        if self.evaluator is None:
            raise OPDError("EffOPDCallback: the evaluator is built at on_train_begin", hint="use it inside a Trainer")
        return self.evaluator(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self._task is not None and self.evaluator is None:
            from ..evaluators import EvalContext

            tok = self._tokenizer or kwargs.get("processing_class") or kwargs.get("tokenizer")
            if tok is None:
                raise OPDError("EffOPDCallback: no tokenizer to score with", hint="pass tokenizer= to EffOPDCallback")
            self.evaluator = self._spec.build(EvalContext(self._task, tok, progress=False))
        self.effopd.start(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        result = self.effopd.after_step(model, state.global_step)
        if result is not None:
            state.log_history.append({"step": state.global_step, **log_entry(result)})
        return control
