"""OPD, GRPO and SFT losses against hand computations in numpy float64."""

import numpy as np
import pytest
import torch

from opd_dynamics.lab.grpo import group_advantages, grpo_loss
from opd_dynamics.lab.opd import opd_loss, reverse_kl
from opd_dynamics.lab.sft import sft_loss


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, 3, 7)), rng.normal(size=(2, 3, 7)), np.array([[1, 1, 0], [1, 1, 1]])


def test_full_opd_loss_is_reverse_kl_by_hand(logits):
    s, t, mask = logits
    p, q = softmax(s), softmax(t)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    expected = (kl * mask).sum() / mask.sum()
    got = opd_loss(torch.tensor(s), torch.tensor(t), torch.zeros(2, 3, dtype=torch.long), torch.tensor(mask))
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert reverse_kl(torch.tensor(s), torch.tensor(t)).numpy() == pytest.approx(kl, rel=1e-12)


def test_full_opd_gradient_matches_analytic(logits):
    # d/ds_j KL(p‖q) = p_j (ln p_j − ln q_j − KL)
    s, t, _ = logits
    p, q = softmax(s[0, 0]), softmax(t[0, 0])
    kl = (p * (np.log(p) - np.log(q))).sum()
    s_t = torch.tensor(s[:1, :1], requires_grad=True)
    opd_loss(s_t, torch.tensor(t[:1, :1]), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1)).backward()
    assert s_t.grad[0, 0].numpy() == pytest.approx(p * (np.log(p) - np.log(q) - kl), abs=1e-12)


def test_sampled_opd_loss_is_reinforce_on_the_log_ratio(logits):
    s, t, mask = logits
    tokens = np.array([[0, 3, 6], [2, 2, 5]])
    lp = np.log(np.take_along_axis(softmax(s), tokens[..., None], -1))[..., 0]
    lq = np.log(np.take_along_axis(softmax(t), tokens[..., None], -1))[..., 0]
    expected = (-(lq - lp) * lp * mask).sum() / mask.sum()
    s_t = torch.tensor(s, requires_grad=True)
    got = opd_loss(s_t, torch.tensor(t), torch.tensor(tokens), torch.tensor(mask), variant="sampled")
    assert got.item() == pytest.approx(expected, rel=1e-12)
    got.backward()  # the reward is held constant: the gradient is −r ∇ln p(y)
    lsm = torch.log_softmax(torch.tensor(s), -1)
    ref = torch.tensor(s, requires_grad=True)
    picked = torch.log_softmax(ref, -1).gather(-1, torch.tensor(tokens)[..., None])[..., 0]
    (-(torch.tensor(lq - lp)) * picked * torch.tensor(mask)).sum().div(mask.sum()).backward()
    assert torch.allclose(s_t.grad, ref.grad) and lsm.shape == s_t.shape


def test_unknown_opd_variant_is_refused(logits):
    s, t, mask = (torch.tensor(x) for x in logits)
    with pytest.raises(ValueError, match="variant"):
        opd_loss(s, t, torch.zeros(2, 3, dtype=torch.long), mask, variant="forward")


def test_group_advantages_by_hand():
    r = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    mean, std = r.mean(1, keepdims=True), r.std(1, ddof=1, keepdims=True)
    expected = (r - mean) / (std + 1e-6)
    got = group_advantages(torch.tensor(r))
    assert got.numpy() == pytest.approx(expected, abs=1e-12)
    assert np.all(got[1].numpy() == 0)  # all-correct group carries no signal


def test_grpo_loss_clips_by_hand():
    logp = np.log(np.array([[0.5, 0.9], [0.2, 0.3]]))
    old = np.log(np.array([[0.25, 0.9], [0.4, 0.3]]))  # ratios 2, 1 | 0.5, 1
    adv = np.array([1.0, -2.0])
    mask = np.array([[1, 1], [1, 0]])
    ratio = np.exp(logp - old)
    surr = np.minimum(ratio * adv[:, None], np.clip(ratio, 0.8, 1.2) * adv[:, None])
    expected = -(surr * mask).sum() / mask.sum()  # = −(1.2 + 1 − 1.6) / 3
    got = grpo_loss(torch.tensor(logp), torch.tensor(old), torch.tensor(adv), torch.tensor(mask), clip=0.2)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(-(1.2 + 1.0 - 1.6) / 3)


def test_sft_loss_is_token_mean_nll(logits):
    s, _, mask = logits
    tokens = np.array([[1, 2, 3], [4, 5, 6]])
    nll = -np.log(np.take_along_axis(softmax(s), tokens[..., None], -1))[..., 0]
    got = sft_loss(torch.tensor(s), torch.tensor(tokens), torch.tensor(mask))
    assert got.item() == pytest.approx((nll * mask).sum() / mask.sum(), rel=1e-12)
