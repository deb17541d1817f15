"""``accuracy``: share of examples whose generation the task's verifier accepts (greedy, or n samples averaged).

acc = (1/N) Σᵢ (1/n) Σⱼ verify(gen_ij, answer_i); greedy (``samples=0``) is n = 1 at temperature 0. Sampling
draws from a ``torch.Generator`` seeded with ``seed`` at the start of every call, so the same weights give the
same score. Generation is :func:`opd_dynamics.generation.generate` (left-padded batches, KV cache, the
task's ``stop`` strings and ``max_new_tokens``). ``checker`` decides what counts as correct
(:mod:`opd_dynamics.evaluators.checkers`: ``exact`` = the task's verifier, ``math`` = math-verify); the checker and
the answer extraction are recorded in ``score.details`` (the manifest's ``answer_checking``).
"""
from __future__ import annotations

from typing import Literal

import torch

from ..generation import generate
from . import checkers
from ._data import batches, examples, special_tokens
from .registry import evaluator


@evaluator("accuracy", higher_is_better=True, bounds=(0.0, 1.0), unit="fraction correct")
def accuracy(ctx, split: Literal["train", "validation", "test"] = "test", limit: int | None = None, samples: int = 0,
             temperature: float = 1.0,
             seed: int = 0, batch_size: int = 128, max_new_tokens: int | None = None, checker: str = "exact"):
    """Share of greedy (samples=0) or sampled generations the checker accepts (exact: the task's verifier)."""
    check = checkers.build(checker, ctx.task)
    exs = examples(ctx, split, limit)
    stop = tuple(getattr(ctx.task, "stop", ()) or ())
    special = special_tokens(ctx.task)
    n = max(int(samples), 1)
    temp = 0.0 if samples == 0 else float(temperature)
    max_new = int(max_new_tokens or ctx.task.max_new_tokens)
    per_batch = max(1, batch_size // n)

    def score(model) -> float:
        gen = torch.Generator().manual_seed(seed)
        correct = 0
        for batch in batches(exs, per_batch, ctx, "accuracy"):
            prompts = [ex.prompt for ex in batch for _ in range(n)]
            texts = generate(model, ctx.tokenizer, prompts, max_new, temp, gen, stop=stop, add_special_tokens=special).texts
            answers = [ex.answer for ex in batch for _ in range(n)]
            correct += sum(check(t, a) for t, a in zip(texts, answers))
        return correct / (len(exs) * n)

    score.details = {**checkers.describe(checker, ctx.task), "stop": list(stop), "max_new_tokens": max_new}
    return score
