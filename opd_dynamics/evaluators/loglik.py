"""``loglik``: mean token log-likelihood of the reference solutions (or answers) given the prompts.

Teacher-forced on ``prompt + target + <eos>``: loglik = Σ_{i,t} ln p(y_it | x_i, y_i<t) / Σᵢ |yᵢ| over every target
token and the ``<eos>`` (``reduce="token"``), or the mean of per-example means (``reduce="example"``). Nats per
token, ≤ 0, higher is better.
"""
from __future__ import annotations

from typing import Literal

from ._data import batches, examples, special_tokens, target, teacher_forced
from .registry import evaluator


@evaluator("loglik", higher_is_better=True, bounds=(float("-inf"), 0.0), unit="nats per token")
def loglik(ctx, split: Literal["train", "validation", "test"] = "test", limit: int | None = None,
           target_field: Literal["solution", "answer"] = "solution", reduce: Literal["token", "example"] = "token",
           batch_size: int = 128):
    """Mean token log-likelihood of reference solutions given prompts (teacher-forced, eos included)."""
    exs = examples(ctx, split, limit)
    special = special_tokens(ctx.task)
    targets = [target(ex, target_field) for ex in exs]
    if reduce not in ("token", "example"):
        from ..errors import OPDError
        raise OPDError(f"loglik: reduce={reduce!r} not understood", hint="use token or example")
    pairs = list(zip([ex.prompt for ex in exs], targets))

    def score(model) -> float:
        total, count, per_example = 0.0, 0, []
        for batch in batches(pairs, batch_size, ctx.progress, "loglik"):
            logp, tokens, mask = teacher_forced(model, ctx.tokenizer, [p for p, _ in batch], [t for _, t in batch], special)
            lp = logp.gather(-1, tokens[..., None]).squeeze(-1) * mask  # (B, R)
            total += float(lp.sum())
            count += int(mask.sum())
            per_example.extend((lp.sum(-1) / mask.sum(-1)).tolist())
        return total / count if reduce == "token" else sum(per_example) / len(per_example)

    return score
