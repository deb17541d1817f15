"""GRPO: reinforcement learning from the verifier's 0/1 reward, advantages normalised per group.

For each prompt the policy samples a group of G responses with rewards r_1 … r_G ∈ {0, 1}:

    A_i = (r_i − mean(r)) / (std(r) + ε)          std with Bessel's correction, as TRL and verl

and every token of response i gets A_i. With ratio ρ_t = π_θ(y_t) / π_old(y_t), the loss is the
PPO-clipped surrogate, averaged over all response tokens of the batch (token-mean, verl's default):

    L = −mean_t min(ρ_t A, clip(ρ_t, 1 − ε_clip, 1 + ε_clip) A)

No KL penalty to a reference model by default (as in DAPO and many recent recipes). With one update
per rollout batch (``updates_per_rollout=1``, the default) ρ = 1 and the clip is inactive; with
more, later updates reuse the batch and the clip bounds how far they move.

The policy is softmax(logits / T) for the sampling temperature T, and every log-prob (old, new,
reference) is taken under it, so ρ = 1 on the first update at any T. Options, all measured on the
``default`` preset (docs/reference-runs.md) and all off by default:

- ``scale_rewards=False``: A_i = r_i − mean(r), no std (Dr. GRPO);
- ``loss_agg="seq-sum"``: Σ over each response's tokens, divided by B · R (B responses, R the
  batch's response width) instead of by the number of response tokens (as Dr. GRPO);
- ``kl_coef`` β > 0: + β · k3(π_ref ‖ π_θ) per token, k3 = e^d − d − 1 with d = ln π_ref − ln π_θ
  (the GRPO paper's estimator), against a frozen ``reference`` model (W₀).

What made the reference runs' GRPO arm degrade W₀ was none of these but the learning rate: see
:mod:`.presets` (``rl_lr``).

>>> group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
tensor([[ 0.8660, -0.8660, -0.8660,  0.8660]])
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batches import Batches
from ..generation import Rollout, generate, response_logits, token_logprobs
from ..task.protocol import Example, Task


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, G) rewards -> (N, G) advantages; a group with one reward value gets zeros."""
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


LOSS_AGGS = ("token-mean", "seq-sum")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float = 0.2, ref_logp: torch.Tensor | None = None,
              kl_coef: float = 0.0, loss_agg: str = "token-mean") -> torch.Tensor:
    """Clipped surrogate (+ β·k3 KL to ``ref_logp``); ``logp``/``old_logp``/``ref_logp``/``mask`` (B, T),
    ``advantages`` (B,). ``loss_agg``: ``token-mean`` (÷ response tokens) or ``seq-sum`` (÷ B·T)."""
    ratio = torch.exp(logp - old_logp.detach())
    adv = advantages[:, None]
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    if kl_coef:
        d = ref_logp.detach() - logp
        per_token = per_token + kl_coef * (torch.exp(d) - d - 1)
    mask = mask.to(logp.dtype)
    if loss_agg == "token-mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if loss_agg == "seq-sum":
        return (per_token * mask).sum() / (mask.shape[0] * mask.shape[1])
    raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGS}")


class GRPOStep:
    """One GRPO update: ``prompts_per_step`` prompts × ``group_size`` samples, reward from ``task.verify``.

    The policy is softmax(logits / ``temperature``): samples are drawn from it and their log-probs
    (old, new and the reference's) are taken under it. ``scale_rewards=False`` drops the std in the
    advantage (Dr. GRPO); ``loss_agg`` and ``kl_coef`` are passed to :func:`grpo_loss`, the KL term
    against ``reference`` (required when ``kl_coef`` > 0; W₀ in the reference runs).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: Task, examples: list[Example],
                 prompts_per_step: int, group_size: int = 8, clip: float = 0.2,
                 updates_per_rollout: int = 1, temperature: float = 1.0, seed: int = 0,
                 scale_rewards: bool = True, loss_agg: str = "token-mean", kl_coef: float = 0.0,
                 reference: PreTrainedModel | None = None):
        if loss_agg not in LOSS_AGGS:
            raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGS}")
        if kl_coef and reference is None:
            raise ValueError("kl_coef > 0 needs a reference model")
        if temperature <= 0:
            raise ValueError("GRPO samples from the policy: temperature must be > 0")
        self.tokenizer, self.task, self.group_size, self.clip = tokenizer, task, group_size, clip
        self.updates_per_rollout, self.temperature = updates_per_rollout, temperature
        self.scale_rewards, self.loss_agg, self.kl_coef = scale_rewards, loss_agg, kl_coef
        self.reference = reference.eval() if reference is not None else None
        self.batches = Batches(examples, prompts_per_step, seed)
        self.generator = torch.Generator().manual_seed(seed + 1)
        self._cache: tuple | None = None

    def logprobs(self, model: PreTrainedModel, rollout: Rollout) -> torch.Tensor:
        """(B, R) log-probs of the sampled tokens under softmax(logits / T), the sampling policy."""
        return token_logprobs(response_logits(model, rollout) / self.temperature, rollout.responses)

    def _rollout(self, model: PreTrainedModel) -> tuple:
        batch = [ex for ex in self.batches.next() for _ in range(self.group_size)]
        rollout = generate(model, self.tokenizer, [ex.prompt for ex in batch], self.task.max_new_tokens,
                           self.temperature, self.generator)
        rewards = torch.tensor([float(self.task.verify(t, ex.answer)) for t, ex in zip(rollout.texts, batch)])
        groups = rewards.view(-1, self.group_size)
        adv = group_advantages(groups) if self.scale_rewards else groups - groups.mean(-1, keepdim=True)
        with torch.no_grad():
            old_logp = self.logprobs(model, rollout)
            ref_logp = self.logprobs(self.reference, rollout) if self.kl_coef else None
        logs = {"train_reward": float(rewards.mean()),
                "solved_groups": float((groups.std(-1) > 0).float().mean()),
                "response_length": float(rollout.response_mask.sum(1).float().mean())}
        return rollout, adv.view(-1), old_logp, ref_logp, logs

    def __call__(self, model: PreTrainedModel, step: int) -> tuple[torch.Tensor, dict]:
        if self._cache is None or (step - 1) % self.updates_per_rollout == 0:
            self._cache = self._rollout(model)
        rollout, adv, old_logp, ref_logp, logs = self._cache
        logp = self.logprobs(model, rollout)
        loss = grpo_loss(logp, old_logp, adv, rollout.response_mask, self.clip, ref_logp, self.kl_coef,
                         self.loss_agg)
        logs = dict(logs)
        if self.kl_coef:
            with torch.no_grad():
                m = rollout.response_mask.to(logp.dtype)
                logs["kl_to_reference"] = float(((logp - ref_logp) * m).sum() / m.sum())
        return loss, logs
