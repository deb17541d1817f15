"""``accuracy``: share of examples whose generation the task's verifier accepts (greedy, or n samples averaged).

acc = (1/N) Σᵢ (1/n) Σⱼ verify(gen_ij, answer_i); greedy (``samples=0``) is n = 1 at temperature 0. Sampling
draws from a ``torch.Generator`` seeded with ``seed`` at the start of every call, so the same weights give the
same score. Generation is :func:`opd_dynamics.generation.generate` (left-padded batches, KV cache, the
task's ``stop`` strings and ``max_new_tokens``). ``checker`` decides what counts as correct
(:mod:`opd_dynamics.evaluators.checkers`: ``exact`` = the task's verifier, ``math`` = math-verify); the checker and
the answer extraction are recorded in ``score.details`` (the manifest's ``answer_checking``).
"""
from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch

from ..generation import generate
from . import checkers
from ._data import batches, examples, special_tokens
from .registry import evaluator


def verified_share(model, tokenizer, exs: Sequence, check: Callable[[str, str], bool], *, max_new_tokens: int,
                   samples: int = 0, temperature: float = 1.0, seed: int = 0, batch_size: int = 128,
                   stop: tuple[str, ...] = (), add_special_tokens: bool = True, progress: bool = False) -> float:
    """(1/N) Σᵢ (1/n) Σⱼ check(gen_ij, answer_i): the one accuracy of the project.

    The ``accuracy`` evaluator and the reference runs' training-time accuracy (:mod:`opd_dynamics.lab.evaluation`,
    greedy, the task's verifier, batches of 256) both call it. ``samples=0`` is greedy (n = 1, temperature 0);
    sampling draws from a generator seeded with ``seed`` on every call. 0 for no examples.
    """
    n = max(int(samples), 1)
    temp = 0.0 if samples == 0 else float(temperature)
    per_batch = max(1, batch_size // n)
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for batch in batches(list(exs), per_batch, progress, "accuracy"):
        prompts = [ex.prompt for ex in batch for _ in range(n)]
        texts = generate(model, tokenizer, prompts, max_new_tokens, temp, gen, stop=stop,
                         add_special_tokens=add_special_tokens).texts
        answers = [ex.answer for ex in batch for _ in range(n)]
        correct += sum(check(t, a) for t, a in zip(texts, answers))
    return correct / max(len(exs) * n, 1)


@evaluator("accuracy", higher_is_better=True, bounds=(0.0, 1.0), unit="fraction correct")
def accuracy(ctx, split: Literal["train", "validation", "test"] = "test", limit: int | None = None, samples: int = 0,
             temperature: float = 1.0,
             seed: int = 0, batch_size: int = 128, max_new_tokens: int | None = None, checker: str = "exact"):
    """Share of greedy (samples=0) or sampled generations the checker accepts (exact: the task's verifier)."""
    check = checkers.build(checker, ctx.task)
    exs = examples(ctx, split, limit)
    stop = tuple(getattr(ctx.task, "stop", ()) or ())
    special = special_tokens(ctx.task)
    max_new = int(max_new_tokens or ctx.task.max_new_tokens)

    def score(model) -> float:
        return verified_share(model, ctx.tokenizer, exs, check, max_new_tokens=max_new, samples=samples,
                              temperature=temperature, seed=seed, batch_size=batch_size, stop=stop,
                              add_special_tokens=special, progress=ctx.progress)

    score.details = {**checkers.describe(checker, ctx.task), "stop": list(stop), "max_new_tokens": max_new}
    return score
