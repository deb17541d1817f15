"""Supervised fine-tuning: cross-entropy on response tokens given the prompt.

L = −mean_t ln π_θ(y_t | prompt, y_<t), a token-mean over every response token (``<eos>`` included)
of the batch; prompt tokens carry no loss. Two sources of responses:

- :class:`SFTStep`: fixed (prompt, response) pairs, e.g. a task's worked solutions — how the
  teacher and the base W₀ are trained;
- :class:`TeacherSFTStep`: at every step, the teacher samples responses to the step's prompts and
  only those the verifier accepts are kept — the SFT arm of the OPD / RL / SFT comparison
  (rejection-sampled distillation, same prompts as the other two arms).

>>> logits = torch.zeros(1, 2, 4)
>>> round(float(sft_loss(logits, torch.tensor([[1, 2]]), torch.ones(1, 2))), 4)  # ln 4
1.3863
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batches import Batches
from ..generation import Rollout, generate, pair_rollout, response_logits, token_logprobs
from ..task.protocol import Example, Task


def sft_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token-mean negative log-likelihood of ``tokens`` (B, T) over ``mask``."""
    mask = mask.to(logits.dtype)
    return -(token_logprobs(logits, tokens) * mask).sum() / mask.sum().clamp(min=1)


def _loss_on(model: PreTrainedModel, rollout: Rollout) -> torch.Tensor:
    return sft_loss(response_logits(model, rollout), rollout.responses, rollout.response_mask)


class SFTStep:
    """Batches of ``batch_size`` examples; the target is each example's ``solution``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, examples: list[Example], batch_size: int,
                 seed: int = 0):
        self.tokenizer = tokenizer
        self.batches = Batches(examples, batch_size, seed)

    def __call__(self, model: PreTrainedModel, step: int) -> tuple[torch.Tensor, dict]:
        batch = self.batches.next()
        rollout = pair_rollout(self.tokenizer, [ex.prompt for ex in batch], [ex.solution for ex in batch])
        return _loss_on(model, rollout), {}


class TeacherSFTStep:
    """``prompts_per_step`` prompts × ``samples_per_prompt`` teacher samples, verifier-filtered."""

    def __init__(self, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: Task,
                 examples: list[Example], prompts_per_step: int, samples_per_prompt: int = 1,
                 temperature: float = 1.0, seed: int = 0):
        self.teacher, self.tokenizer, self.task = teacher.eval(), tokenizer, task
        self.batches = Batches(examples, prompts_per_step, seed)
        self.samples, self.temperature = samples_per_prompt, temperature
        self.generator = torch.Generator().manual_seed(seed + 1)

    def __call__(self, model: PreTrainedModel, step: int) -> tuple[torch.Tensor, dict]:
        batch = [ex for ex in self.batches.next() for _ in range(self.samples)]
        rollout = generate(self.teacher, self.tokenizer, [ex.prompt for ex in batch],
                           self.task.max_new_tokens, self.temperature, self.generator)
        kept = [(ex.prompt, text) for ex, text in zip(batch, rollout.texts) if self.task.verify(text, ex.answer)]
        logs = {"accepted": len(kept) / len(batch)}
        if not kept:  # nothing to learn from: zero gradients (Adam momentum still moves)
            return sum(p.sum() for p in model.parameters()) * 0.0, logs
        prompts, responses = zip(*kept)
        return _loss_on(model, pair_rollout(self.tokenizer, list(prompts), list(responses))), logs
