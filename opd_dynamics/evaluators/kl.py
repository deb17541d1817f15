"""``kl``: mean per-token KL between the model and a reference model (teacher, or the run's final checkpoint).

On fixed text — each prompt followed by its reference solution and ``<eos>``, teacher-forced — at every target
position t, with p_t the scored model and q_t the reference:

- ``direction="reverse"`` (default, OPD's objective): KL(p_t ‖ q_t) = Σ_v p_t(v) (ln p_t(v) − ln q_t(v))
- ``direction="forward"``: KL(q_t ‖ p_t)

averaged over all target tokens, in float64. **The evaluator returns −KL** (nats per token, ≤ 0), so that higher
is better like every other evaluator; the reference's log-probs are computed once, on the first call, and kept.
"""
from __future__ import annotations

from typing import Literal

from pathlib import Path

from ..errors import OPDError
from ._data import batches, examples, special_tokens, target, teacher_forced
from .registry import evaluator


def _load(path: Path, device):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    return model.to(device).eval()


@evaluator("kl", higher_is_better=True, bounds=(float("-inf"), 0.0), unit="−KL, nats per token")
def kl(ctx, reference: str = "teacher", direction: Literal["reverse", "forward"] = "reverse",
       split: Literal["train", "validation", "test"] = "test", limit: int | None = None,
       target_field: str = "solution", batch_size: int = 64):
    """Negative mean token KL to a reference model (teacher, final, or a directory) on prompts + reference solutions."""
    if direction not in ("reverse", "forward"):
        raise OPDError(f"kl: direction={direction!r} not understood", hint="use reverse (KL(model‖ref)) or forward")
    path = ctx.references.get(reference) or (Path(reference) if Path(reference).is_dir() else None)
    if path is None:
        raise OPDError(f"kl: no reference model {reference!r} (known: {sorted(ctx.references)})",
                       hint="pass --teacher DIR, use reference=final, or give a model directory")
    exs = examples(ctx, split, limit)
    special = special_tokens(ctx.task)
    pairs = list(zip([ex.prompt for ex in exs], [target(ex, target_field) for ex in exs]))
    cache: list = []  # reference log-probs per batch, filled on the first call

    def score(model) -> float:
        device = next(model.parameters()).device
        if not cache:
            import torch
            ref = _load(path, device)
            with torch.no_grad():
                for batch in batches(pairs, batch_size, ctx.progress, f"kl: {reference} log-probs"):
                    cache.append(teacher_forced(ref, ctx.tokenizer, [p for p, _ in batch], [t for _, t in batch], special)[0])
            del ref
        total, count = 0.0, 0
        for batch, logq in zip(batches(pairs, batch_size, ctx.progress, "kl"), cache):
            logp, _, mask = teacher_forced(model, ctx.tokenizer, [p for p, _ in batch], [t for _, t in batch], special)
            a, b = (logp, logq) if direction == "reverse" else (logq, logp)
            per_token = (a.exp() * (a - b)).sum(-1)  # (B, R)
            total += float((per_token * mask).sum())
            count += int(mask.sum())
        return -total / count

    return score
