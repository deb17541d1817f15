"""GRPO's trainer: log-probs of the sampling policy, rewards of the right prompts, loss options, lr."""

import dataclasses

import numpy as np
import pytest
import torch

import opd_dynamics.generation as generation
from opd_dynamics.lab import ModelSpec, build_model, char_tokenizer
from opd_dynamics.lab.arms import run_arm
from opd_dynamics.lab.batches import Batches
from opd_dynamics.lab.grpo import GRPOStep, grpo_loss
from opd_dynamics.lab.presets import get_preset
from opd_dynamics.lab.reference import make_task
from opd_dynamics.task.protocol import Example


def model_and_tokenizer(seed=0):
    tok = char_tokenizer()
    return build_model(ModelSpec(hidden=32, layers=2, heads=2, intermediate=64), tok, seed), tok


class RecordingTask:
    """Pays 1 when the response has an even length; remembers every (response, answer) it verified."""

    name, max_new_tokens = "stub", 6

    def __init__(self, n=12):
        self._examples = [Example(f"{i}+{i}=", str(2 * i), str(2 * i)) for i in range(n)]
        self.seen = []

    def examples(self, split):
        return list(self._examples)

    def verify(self, generation, answer):
        self.seen.append((generation, answer))
        return len(generation) % 2 == 0


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_are_those_of_the_sampling_policy(monkeypatch, temperature):
    # what multinomial drew each token with is what the loss must see as π_old (ρ = 1 at first)
    drawn = []
    multinomial = torch.multinomial

    def recording(probs, n, generator=None):
        token = multinomial(probs, n, generator=generator)
        drawn.append(probs.gather(-1, token).squeeze(-1).log())
        return token

    monkeypatch.setattr(generation.torch, "multinomial", recording)
    model, tok = model_and_tokenizer()
    task = RecordingTask()
    step = GRPOStep(tok, task, task.examples("train"), prompts_per_step=3, group_size=4,
                    temperature=temperature)
    rollout, adv, old_logp, _, _ = step._rollout(model)
    mask = rollout.response_mask.bool()
    sampled = torch.stack(drawn, 1)
    assert torch.allclose(old_logp[mask], sampled[mask], atol=1e-5)
    # eos is covered, padding after it is not
    last = mask.sum(1) - 1
    ended = rollout.responses[torch.arange(len(last)), last] == tok.eos_token_id
    assert ended.any() and not (rollout.responses[mask] == tok.pad_token_id).any()


def test_rewards_come_from_each_samples_own_prompt():
    model, tok = model_and_tokenizer()
    task = RecordingTask()
    step = GRPOStep(tok, task, task.examples("train"), prompts_per_step=3, group_size=4, seed=5)
    rollout, adv, _, _, logs = step._rollout(model)
    prompts = Batches(task.examples("train"), 3, 5).next()
    assert [a for _, a in task.seen] == [ex.answer for ex in prompts for _ in range(4)]
    assert [g for g, _ in task.seen] == rollout.texts
    rewards = torch.tensor([float(len(t) % 2 == 0) for t in rollout.texts])
    assert logs["train_reward"] == pytest.approx(float(rewards.mean()))
    for r, a in zip(rewards.view(3, 4), adv.view(3, 4)):  # advantage sign follows reward within a group
        assert torch.equal(a > 0, r > r.mean()) and torch.equal(a < 0, r < r.mean())


def test_one_descent_step_raises_rewarded_responses_and_lowers_the_rest():
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 7, requires_grad=True)
    tokens = torch.randint(0, 7, (4, 5))
    mask = torch.ones(4, 5)
    adv = torch.tensor([1.5, -0.5, -0.5, -0.5])

    def seq_logp():
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0].sum(1)

    before = seq_logp().detach()
    lp = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]
    grpo_loss(lp, lp.detach(), adv, mask).backward()
    with torch.no_grad():
        logits -= 1.0 * logits.grad
    change = seq_logp().detach() - before
    assert change[0] > 0 and (change[1:] < 0).all()


def test_seq_sum_and_kl_by_hand():
    rng = np.random.default_rng(1)
    logp, ref = np.log(rng.uniform(0.1, 1, (2, 3))), np.log(rng.uniform(0.1, 1, (2, 3)))
    adv, mask = np.array([1.0, -1.0]), np.array([[1, 1, 0], [1, 1, 1]])
    d = ref - logp
    per_token = -adv[:, None] + 0.1 * (np.exp(d) - d - 1)  # ρ = 1
    t = [torch.tensor(x) for x in (logp, logp, adv, mask)]
    got = grpo_loss(*t, ref_logp=torch.tensor(ref), kl_coef=0.1, loss_agg="seq-sum")
    assert got.item() == pytest.approx((per_token * mask).sum() / 6, rel=1e-12)
    got = grpo_loss(*t, ref_logp=torch.tensor(ref), kl_coef=0.1)
    assert got.item() == pytest.approx((per_token * mask).sum() / 5, rel=1e-12)
    with pytest.raises(ValueError, match="loss_agg"):
        grpo_loss(*t, loss_agg="token-sum")


def test_kl_to_an_identical_reference_is_zero_and_unscaled_advantages_are_centred():
    model, tok = model_and_tokenizer()
    task = RecordingTask()
    with pytest.raises(ValueError, match="reference"):
        GRPOStep(tok, task, task.examples("train"), 3, 4, kl_coef=0.1)
    step = GRPOStep(tok, task, task.examples("train"), 3, 4, kl_coef=0.1, reference=model_and_tokenizer()[0],
                    scale_rewards=False)
    _, logs = step(model, 1)
    assert logs["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)
    _, adv, _, _, _ = step._cache
    rewards = torch.tensor([float(len(g) % 2 == 0) for g, _ in task.seen])
    assert torch.allclose(adv, (rewards.view(3, 4) - rewards.view(3, 4).mean(-1, keepdim=True)).view(-1))


def test_the_rl_arm_trains_at_its_own_learning_rate():
    preset = dataclasses.replace(get_preset("tiny"), rl_lr=1e-5, run_steps=2, run_warmup=0,
                                 diagnostic_prompts=0)
    tok = char_tokenizer()
    task = make_task(preset, 0)
    model = build_model(preset.student, tok, 0)
    for arm, lr in (("rl", 1e-5), ("opd", preset.run_lr)):
        _, history = run_arm(arm, model, model, tok, task, preset, None, progress=False)
        assert [h["learning_rate"] for h in history if "learning_rate" in h] == [lr, lr]
    assert get_preset("default").rl_lr < get_preset("default").run_lr
