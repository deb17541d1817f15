"""Shared by the built-in evaluators: the fixed example list, batching with a progress bar, token log-probs."""
from __future__ import annotations

from typing import Iterator

import torch
from tqdm.auto import tqdm

from ..errors import OPDError
from ..generation import pair_rollout, response_logits


def examples(ctx, split: str, limit: int | None) -> list:
    """The first ``limit`` examples of ``split`` (all when None), in the task's fixed order."""
    try:
        exs = ctx.task.examples(split)
    except ValueError as e:
        raise OPDError(f"evaluator: {e}", hint="use split=train, validation or test") from None
    if limit is not None:
        exs = exs[:int(limit)]
    if not exs:
        raise OPDError(f"task {getattr(ctx.task, 'name', ctx.task)!r} has no {split} examples",
                       hint="pick another split= or check the task file")
    return exs


def batches(items: list, batch_size: int, progress: bool, desc: str) -> Iterator[list]:
    for i in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress, leave=False, unit="batch"):
        yield items[i:i + batch_size]


def target(ex, which: str) -> str:
    if which not in ("solution", "answer"):
        raise OPDError(f"target={which!r} not understood", hint="use solution or answer")
    return ex.solution if which == "solution" else ex.answer


def special_tokens(task) -> bool:
    """Whether prompts get the tokenizer's special tokens (False for chat-rendered prompts: the template has them)."""
    return bool(getattr(task, "add_special_tokens", True))


def teacher_forced(model, tokenizer, prompts: list[str], targets: list[str], add_special_tokens: bool = True):
    """Log-probs (B, R, V) float64 of ``model`` at each target position (``<eos>`` appended), and the mask (B, R)."""
    rollout = pair_rollout(tokenizer, prompts, targets, add_special_tokens)
    device = next(model.parameters()).device
    rollout.sequences, rollout.attention_mask = rollout.sequences.to(device), rollout.attention_mask.to(device)
    logits = response_logits(model, rollout)  # (B, R, V)
    return torch.log_softmax(logits.double(), -1), rollout.responses, rollout.response_mask.to(device)
