"""GRPO: reinforcement learning from the verifier's 0/1 reward, advantages normalised per group.

For each prompt the policy samples a group of G responses with rewards r_1 … r_G ∈ {0, 1}:

    A_i = (r_i − mean(r)) / (std(r) + ε)          std with Bessel's correction, as TRL and verl

and every token of response i gets A_i. With ratio ρ_t = π_θ(y_t) / π_old(y_t), the loss is the
PPO-clipped surrogate, averaged over all response tokens of the batch (token-mean, verl's default):

    L = −mean_t min(ρ_t A, clip(ρ_t, 1 − ε_clip, 1 + ε_clip) A)

No KL penalty to a reference model (as in DAPO and many recent recipes). With one update per
rollout batch (``updates_per_rollout=1``, the default) ρ = 1 and the clip is inactive; with more,
later updates reuse the batch and the clip bounds how far they move.

>>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
tensor([[ 0.8660, -0.8660, -0.8660,  0.8660]])
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batches import Batches
from .generation import Rollout, generate, response_logits, token_logprobs
from .task import Example, Task


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, G) rewards -> (N, G) advantages; a group with one reward value gets zeros."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """Clipped surrogate; ``logp``/``old_logp``/``mask`` (B, T), ``advantages`` (B,)."""
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    mask = mask.to(logp.dtype)
    return -(surrogate * mask).sum() / mask.sum().clamp(min=1)


class GRPOStep:
    """One GRPO update: ``prompts_per_step`` prompts × ``group_size`` samples, reward from ``task.verify``."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: Task, examples: list[Example],
                 prompts_per_step: int, group_size: int = 8, clip: float = 0.2,
                 updates_per_rollout: int = 1, temperature: float = 1.0, seed: int = 0):
        self.tokenizer, self.task, self.group_size, self.clip = tokenizer, task, group_size, clip
        self.updates_per_rollout, self.temperature = updates_per_rollout, temperature
        self.batches = Batches(examples, prompts_per_step, seed)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._cache: tuple[Rollout, torch.Tensor, torch.Tensor, dict] | None = None

    def _rollout(self, model: PreTrainedModel) -> tuple[Rollout, torch.Tensor, torch.Tensor, dict]:
        batch = [ex for ex in self.batches.next() for _ in range(self.group_size)]
        rollout = generate(model, self.tokenizer, [ex.prompt for ex in batch], self.task.max_new_tokens,
                           self.temperature, self.generator)
        rewards = torch.tensor([float(self.task.verify(t, ex.answer)) for t, ex in zip(rollout.texts, batch)])
        adv = group_advantages(rewards.view(-1, self.group_size)).view(-1)
        with torch.no_grad():
            old_logp = token_logprobs(response_logits(model, rollout), rollout.responses)
        groups = rewards.view(-1, self.group_size)
        logs = {"train_reward": float(rewards.mean()),
                "solved_groups": float((groups.std(-1) > 0).float().mean()),
                "response_length": float(rollout.response_mask.sum(1).float().mean())}
        return rollout, adv, old_logp, logs

    def __call__(self, model: PreTrainedModel, step: int) -> tuple[torch.Tensor, dict]:
        if self._cache is None or (step - 1) % self.updates_per_rollout == 0:
            self._cache = self._rollout(model)
        rollout, adv, old_logp, logs = self._cache
        logp = token_logprobs(response_logits(model, rollout), rollout.responses)
        loss = grpo_loss(logp, old_logp, adv, rollout.response_mask, self.clip)
        return loss, dict(logs)
