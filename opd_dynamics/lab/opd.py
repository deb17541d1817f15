"""On-policy distillation: the student samples, the teacher grades every token it visited.

With p = π_student(· | prefix) and q = π_teacher(· | prefix) at each response position t of a
student rollout, two losses (``variant``):

- ``"full"`` (default): the per-token reverse KL over the whole vocabulary,
  L = mean_t Σ_v p_t(v) (ln p_t(v) − ln q_t(v)), differentiated through p exactly.
- ``"sampled"``: a REINFORCE-style estimate on the sampled token y_t only (EffOPD / thunlp recipe),
  per-token reward r_t = ln q_t(y_t) − ln p_t(y_t) held constant, L = −mean_t r_t · ln p_t(y_t).
  Its expectation over y_t ~ p_t has the same gradient as the full loss.

Means are over all response tokens of the batch (token-mean). The prefixes are the student's own,
sampled with no gradient; each step draws fresh rollouts (on-policy).

>>> s, t = torch.randn(1, 2, 5), torch.randn(1, 2, 5)
>>> float(opd_loss(s, s, torch.zeros(1, 2, dtype=torch.long), torch.ones(1, 2)))
0.0
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batches import Batches
from ..generation import generate, response_logits, token_logprobs
from ..task.protocol import Example, Task

VARIANTS = ("full", "sampled")


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per position, full vocabulary: (B, T, V) × 2 -> (B, T)."""
    log_p = torch.log_softmax(student_logits, -1)
    log_q = torch.log_softmax(teacher_logits, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def opd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tokens: torch.Tensor,
             mask: torch.Tensor, variant: str = "full") -> torch.Tensor:
    """Token-mean OPD loss over ``mask`` (B, T); ``tokens`` (B, T) are the sampled ones."""
    mask = mask.to(student_logits.dtype)
    if variant == "full":
        per_token = reverse_kl(student_logits, teacher_logits.detach())
    elif variant == "sampled":
        logp = token_logprobs(student_logits, tokens)
        reward = (token_logprobs(teacher_logits, tokens) - logp).detach()
        per_token = -reward * logp
    else:
        raise ValueError(f"unknown OPD variant {variant!r}; expected one of {VARIANTS}")
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


class OPDStep:
    """One OPD step: ``prompts_per_step`` prompts × ``samples_per_prompt`` student rollouts."""

    def __init__(self, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                 examples: list[Example], prompts_per_step: int, samples_per_prompt: int = 1,
                 variant: str = "full", temperature: float = 1.0, seed: int = 0):
        if variant not in VARIANTS:
            raise ValueError(f"unknown OPD variant {variant!r}; expected one of {VARIANTS}")
        self.teacher, self.tokenizer, self.task = teacher.eval(), tokenizer, task
        self.batches = Batches(examples, prompts_per_step, seed)
        self.samples, self.variant, self.temperature = samples_per_prompt, variant, temperature
        self.generator = torch.Generator().manual_seed(seed + 1)

    def __call__(self, model: PreTrainedModel, step: int) -> tuple[torch.Tensor, dict]:
        batch = [ex for ex in self.batches.next() for _ in range(self.samples)]
        rollout = generate(model, self.tokenizer, [ex.prompt for ex in batch], self.task.max_new_tokens,
                           self.temperature, self.generator)
        student = response_logits(model, rollout)
        with torch.no_grad():
            teacher = response_logits(self.teacher, rollout)
        mask = rollout.response_mask
        loss = opd_loss(student, teacher, rollout.responses, mask, self.variant)
        with torch.no_grad():
            kl = float((reverse_kl(student, teacher) * mask).sum() / mask.sum())
        correct = [self.task.verify(t, ex.answer) for t, ex in zip(rollout.texts, batch)]
        return loss, {"reverse_kl": kl, "train_reward": sum(correct) / len(correct),
                      "response_length": float(mask.sum(1).float().mean())}
