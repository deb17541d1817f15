"""Scoring a model during training: verifier accuracy and, with a teacher, the token diagnostics.

``Evaluator(model)`` returns a dict merged into the training log:

- ``eval_accuracy``: share of ``examples`` whose greedy generation the task's verifier accepts;
- with a ``teacher``: the Rethinking-OPD (arXiv 2604.13016) token diagnostics (:mod:`.diagnostics`) on student rollouts — one
  sampled response (temperature 1) to each of the first ``diagnostic_prompts`` examples, scored by
  both models at the student-visited prefixes (``preset="authors"``: thunlp/OPD's overlap mass and overlap
  advantage, docs/fidelity.md).

The rollouts use their own generator, re-seeded on every call, so evaluating never changes what
training samples next, and two evaluations of the same weights give the same numbers.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..diagnostics import K, token_diagnostics
from ..evaluators.accuracy import verified_share
from ..generation import generate, response_logits
from ..task.protocol import Example, Task


def greedy_accuracy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                    examples: list[Example]) -> float:
    """Share of ``examples`` whose greedy generation ``task.verify`` accepts: the ``accuracy`` evaluator's
    :func:`~opd_dynamics.evaluators.accuracy.verified_share` with the lab's settings (no stop strings, batches of 256)."""
    return verified_share(model, tokenizer, examples, task.verify, max_new_tokens=task.max_new_tokens, batch_size=256)


accuracy = greedy_accuracy  # the name earlier versions exported from opd_dynamics.lab (docs/effopd.md, bench/)


class Evaluator:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: Task, examples: list[Example],
                 teacher: PreTrainedModel | None = None, diagnostic_prompts: int = 64, k: int = K,
                 seed: int = 0, preset: str | None = None):
        from ..presets import check

        self.tokenizer, self.task, self.examples, self.teacher = tokenizer, task, examples, teacher
        self.diagnostic_prompts, self.k, self.seed, self.preset = diagnostic_prompts, k, seed, check(preset)

    @torch.no_grad()
    def __call__(self, model: PreTrainedModel) -> dict[str, float]:
        logs = {"eval_accuracy": greedy_accuracy(model, self.tokenizer, self.task, self.examples)}
        if self.teacher is not None and self.diagnostic_prompts > 0:
            prompts = [ex.prompt for ex in self.examples[:self.diagnostic_prompts]]
            rollout = generate(model, self.tokenizer, prompts, self.task.max_new_tokens, 1.0,
                               torch.Generator().manual_seed(self.seed))
            logs.update(token_diagnostics(response_logits(model, rollout),
                                          response_logits(self.teacher, rollout),
                                          rollout.response_mask, k=self.k, preset=self.preset))
        return logs
