"""Online early-subspace projection (Geometry of OPD): float64 oracle, planted subspaces, no-op before t₀, the
reference loop, a real transformers Trainer and TRL's GKDTrainer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from opd_dynamics.callbacks import EarlySubspaceProjection, EarlySubspaceProjectionCallback
from opd_dynamics.callbacks.projection import resolve_t0
from opd_dynamics.effopd import extrapolated_names
from opd_dynamics.errors import OPDError
from opd_dynamics.synthetic import tiny_llama


def _body(model):
    params = dict(model.named_parameters())
    return {n: params[n] for n in extrapolated_names(params)}


def _snapshot(model):
    return {n: p.detach().clone() for n, p in _body(model).items()}


def _top_right(delta: np.ndarray, k: int) -> np.ndarray:
    return np.linalg.svd(delta, full_matrices=False)[2][:k].T  # n×k, the oracle: LAPACK SVD in float64


def _fake_training(model, hook, steps, step_of):
    """Apply ``step_of(name, p, t)`` as the optimizer's step t, then the hook; returns the weights after each step."""
    after = {}
    for t in range(1, steps + 1):
        with torch.no_grad():
            for n, p in _body(model).items():
                p.add_(step_of(n, p, t))
        if hook is not None:
            hook(model, t, {})
        after[t] = _snapshot(model)
    return after


def test_every_update_after_t0_lies_in_the_early_subspace_float64_oracle():
    model = tiny_llama(hidden=32, seed=0).double()
    w0 = _snapshot(model)
    g = torch.Generator().manual_seed(1)
    steps = {(n, t): 1e-2 * torch.randn(p.shape, generator=g, dtype=torch.float64)
             for n, p in _body(model).items() for t in range(1, 9)}
    k, t0 = 4, 3
    hook = EarlySubspaceProjection(at=t0, k=k, model=model)
    after = _fake_training(model, hook, 8, lambda n, p, t: steps[(n, t)])
    assert len(hook.bases) == len(w0) == 14
    for n in w0:
        d0 = (after[t0][n] - w0[n]).numpy()
        v = _top_right(d0, k)
        expected = after[t0][n].numpy() + sum(steps[(n, t)].numpy() for t in range(t0 + 1, 9)) @ v @ v.T
        np.testing.assert_allclose(after[8][n].numpy(), expected, rtol=0, atol=1e-12)
        later = (after[8][n] - after[t0][n]).numpy()
        assert np.abs(later - later @ v @ v.T).max() < 1e-12          # nothing outside span(V_K)
        assert np.linalg.norm(later) > 1e-3                            # and it did move
    # the share of ‖X‖² kept is K/n in expectation for an isotropic step (k = 4 of n = 32 or 64 input dims)
    assert all(0.03 < s < 0.2 for s in hook.kept.values()) and sorted(hook.kept) == [4, 5, 6, 7, 8]


def test_the_hook_is_a_bitwise_no_op_up_to_and_including_t0():
    plain, hooked = tiny_llama(seed=2), tiny_llama(seed=2)
    hook = EarlySubspaceProjection(at="50%", k=2, total_steps=8, model=hooked)
    assert hook.t0 == 4
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = _fake_training(plain, None, 6, lambda n, p, t: torch.randn(p.shape, generator=g1) * 1e-2)
    b = _fake_training(hooked, hook, 6, lambda n, p, t: torch.randn(p.shape, generator=g2) * 1e-2)
    for t in (1, 2, 3, 4):
        assert all(torch.equal(a[t][n], b[t][n]) for n in a[t])
    assert not any(torch.equal(a[5][n], b[5][n]) for n in a[5])       # step 5 is projected
    assert sorted(hook.kept) == [5, 6] and all(0 < s < 1 for s in hook.kept.values())
    logs = {}
    hook(hooked, 7, logs)   # no step was taken: nothing to keep, and the log says so rather than a made-up share
    assert np.isnan(logs["projection_kept"])


def test_planted_subspace_is_kept_and_the_orthogonal_part_removed_exactly():
    """Updates with row space span(v1, v2) up to t₀ and then v1, v2 plus an orthogonal v3 component: K = 2 keeps
    the v1/v2 part exactly and removes v3; the kept share is known in closed form."""
    model = tiny_llama(hidden=16, layers=1, seed=5).double()
    g = torch.Generator().manual_seed(3)
    planted = {}
    for n, p in _body(model).items():
        m, d = p.shape
        q = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64))[0]
        planted[n] = (torch.randn(m, 2, generator=g, dtype=torch.float64), q)

    def step(n, p, t):
        a, q = planted[n]
        inside = a @ q[:, :2].T * 1e-2                           # rank 2, rows in span(v1, v2)
        outside = torch.outer(a[:, 0], q[:, 2]) * (1e-2 if t > 2 else 0.0)
        return inside + outside

    hook = EarlySubspaceProjection(at=2, k=2, model=model)
    w0 = _snapshot(model)
    after = _fake_training(model, hook, 6, step)
    for n in w0:
        a, q = planted[n]
        expected = w0[n] + 6 * (a @ q[:, :2].T) * 1e-2
        torch.testing.assert_close(after[6][n], expected, rtol=0, atol=1e-13)
    inside = sum(float(((planted[n][0] @ planted[n][1][:, :2].T) ** 2).sum()) for n in w0)
    outside = sum(float((planted[n][0][:, 0] ** 2).sum()) for n in w0)
    for s in hook.kept.values():
        assert s == pytest.approx(inside / (inside + outside), rel=1e-10)


def test_fused_and_transposed_tensors_are_projected_per_module():
    """GPT-2 stores q, k, v fused in one (in, out) Conv1D tensor: each part gets its own subspace."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=32, n_positions=16)).double()
    hook = EarlySubspaceProjection(at=1, k=3, model=model)
    assert {p.kind for ps in hook.parts.values() for p in ps} >= {"attn_q", "attn_k", "attn_v", "mlp_up"}
    g = torch.Generator().manual_seed(0)
    params = dict(model.named_parameters())
    w = {n: params[n].detach().clone() for n in hook.parts}
    for t in (1, 2, 3):
        with torch.no_grad():
            for n in hook.parts:
                params[n].add_(1e-2 * torch.randn(params[n].shape, generator=g, dtype=torch.float64))
        hook(model, t, {})
        if t == 1:
            w1 = {n: params[n].detach().clone() for n in hook.parts}
    c_attn = "transformer.h.0.attn.c_attn.weight"
    for i, kind in enumerate(("attn_q", "attn_k", "attn_v")):
        d1 = (w1[c_attn] - w[c_attn]).T[16 * i:16 * (i + 1)].numpy()      # (out, in) orientation
        later = (params[c_attn].detach() - w1[c_attn]).T[16 * i:16 * (i + 1)].numpy()
        v = _top_right(d1, 3)
        assert np.abs(later - later @ v @ v.T).max() < 1e-12, kind
        assert np.linalg.norm(later) > 1e-3


def test_in_the_reference_loop_with_adamw():
    """A real AdamW run of the lab loop: after t₀ the cumulative update stays in the subspace (float32 rounding
    only); the same run without the hook leaves it (so the check can fail)."""
    from opd_dynamics.lab import TrainConfig, train

    def run(with_hook):
        model = tiny_llama(hidden=32, seed=7)
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, 64, (6, 4, 12), generator=g)
        hooks = [EarlySubspaceProjection(at="25%", k=4, total_steps=8, model=model)] if with_hook else []
        snaps = {}
        step_fn = lambda m, t: (m(input_ids=data[t % 6], labels=data[t % 6]).loss, {})  # noqa: E731
        record = lambda m, t, log: snaps.__setitem__(t, _snapshot(m))  # noqa: E731
        w0 = _snapshot(model)
        history = train(model, None, step_fn, TrainConfig(steps=8, lr=1e-2), step_hooks=[*hooks, record],
                        progress=False)
        return w0, snaps, history

    def outside_share(w0, snaps):
        worst = 0.0
        for n in w0:
            v = _top_right((snaps[2][n] - w0[n]).double().numpy(), 4)
            later = (snaps[8][n] - snaps[2][n]).double().numpy()
            worst = max(worst, np.linalg.norm(later - later @ v @ v.T) / np.linalg.norm(later))
        return worst

    w0, snaps, history = run(True)
    assert outside_share(w0, snaps) < 1e-5
    assert [h["step"] for h in history if "projection_kept" in h] == [3, 4, 5, 6, 7, 8]
    w0, snaps, _ = run(False)
    assert outside_share(w0, snaps) > 0.5


def test_callback_inside_a_real_transformers_trainer(tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = tiny_llama(seed=4)
    w0 = _snapshot(model)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(0, 64, (12,), generator=g)), "labels": ids.clone()} for _ in range(16)]
    snaps = {}

    class Snap(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snaps[state.global_step] = _snapshot(model)

    cb = EarlySubspaceProjectionCallback(at="40%", k=4)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, learning_rate=1e-2,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[cb, Snap()])
    trainer.train()
    assert cb.projection.t0 == 2
    log = trainer.state.log_history
    assert [e["step"] for e in log if "projection_t0" in e] == [2]
    assert [e["step"] for e in log if "projection_kept" in e] == [3, 4, 5]
    for n in w0:
        v = _top_right((snaps[2][n] - w0[n]).double().numpy(), 4)
        later = (snaps[5][n] - snaps[2][n]).double().numpy()
        assert np.linalg.norm(later - later @ v @ v.T) < 1e-5 * np.linalg.norm(later)


def test_t0_and_settings_errors_are_one_line_opd_errors():
    assert resolve_t0("20%", 64) == 13 and resolve_t0(0.2, 10) == 2 and resolve_t0("1%", 10) == 1
    with pytest.raises(OPDError, match="run length is unknown"):
        resolve_t0("20%", None)
    with pytest.raises(OPDError, match="before the first update"):
        resolve_t0(0, 10)
    with pytest.raises(OPDError, match="not inside the run"):
        resolve_t0("120%", 10)
    with pytest.raises(OPDError, match="side"):
        EarlySubspaceProjection(side="up")
    with pytest.raises(OPDError, match="keeps nothing"):
        EarlySubspaceProjection(k=0)
    with pytest.raises(OPDError, match="no W₀"):
        EarlySubspaceProjection(at=1)(tiny_llama(), 1, {})
    with pytest.raises(OPDError, match="no parameter matches"):
        EarlySubspaceProjection(at=1, select=["kind=router"], model=tiny_llama())


def _gkd_run(tmp_path, monkeypatch, with_callback: bool):
    """5 steps of TRL's GKDTrainer, lmbda=1 beta=1 (on-policy reverse KL), snapshots before and after the hook."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from helpers import gkd_setup

    tok, llama, rows = gkd_setup(layers=1)

    class Snap(TrainerCallback):  # runs where it stands in the callback list: before or after the projection
        def __init__(self):
            self.at = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.at[state.global_step] = _snapshot(model)

    student = llama(16, 0)
    w0 = _snapshot(student)
    raw, projected = Snap(), Snap()
    cb = EarlySubspaceProjectionCallback(at="40%", k=3)
    callbacks = [raw, cb, projected] if with_callback else [raw, projected]
    args = GKDConfig(output_dir=str(tmp_path), max_steps=5, per_device_train_batch_size=4, lmbda=1.0, beta=1.0,
                     max_new_tokens=4, save_strategy="no", logging_steps=1, report_to=[], use_cpu=True,
                     disable_tqdm=True, learning_rate=1e-2, max_length=32, seed=0)
    trainer = GKDTrainer(model=student, teacher_model=llama(32, 1), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok, callbacks=callbacks)
    trainer.train()
    return w0, raw.at, projected.at, cb, trainer.state.log_history


def _outside_share(w0, after, t0=2, last=5, k=3):
    """max over matrices of ‖(W_T − W_{t0})(I − V Vᵀ)‖ / ‖W_T − W_{t0}‖ (V: float64 SVD of ΔW_{t0})."""
    worst = 0.0
    for n in w0:
        v = _top_right((after[t0][n] - w0[n]).double().numpy(), k)
        later = (after[last][n] - after[t0][n]).double().numpy()
        worst = max(worst, np.linalg.norm(later - later @ v @ v.T) / np.linalg.norm(later))
    return worst


@pytest.mark.slow
def test_callback_inside_trl_gkd_on_policy_distillation_float64_oracle(tmp_path, monkeypatch):
    """Inside TRL's GKDTrainer (student rollouts, reverse KL) every step after t₀ is the optimizer's own step X_t
    (read before the hook) projected onto V_K of ΔW_{t₀}: W_t = W_{t−1} + X_t V Vᵀ in float64, so
    W_T − W_{t₀} lies in span(V_K); the same run without the callback leaves it (the check can fail)."""
    w0, raw, after, cb, log = _gkd_run(tmp_path / "on", monkeypatch, with_callback=True)
    assert cb.projection.t0 == 2 and len(cb.projection.bases) == len(w0) == 7
    for t in (1, 2):                                             # up to and including t₀ the hook leaves the step
        assert all(torch.equal(raw[t][n], after[t][n]) for n in w0)
    for n in w0:
        v = _top_right((after[2][n] - w0[n]).double().numpy(), 3)
        for t in (3, 4, 5):                                      # the oracle: the raw step, projected in float64
            x = (raw[t][n].double() - after[t - 1][n].double()).numpy()
            expected = after[t - 1][n].double().numpy() + x @ v @ v.T
            np.testing.assert_allclose(after[t][n].double().numpy(), expected, rtol=0, atol=1e-6)
            assert np.linalg.norm(x - x @ v @ v.T) > 1e-2 * np.linalg.norm(x)   # the raw step did leave span(V)
    assert _outside_share(w0, after) < 1e-5
    assert [e["step"] for e in log if "projection_t0" in e] == [2]
    assert [e["step"] for e in log if "projection_kept" in e] == [3, 4, 5]
    assert all(0 < e["projection_kept"] < 1 for e in log if "projection_kept" in e)

    w0, raw, after, _, _ = _gkd_run(tmp_path / "off", monkeypatch, with_callback=False)
    assert all(torch.equal(raw[5][n], after[5][n]) for n in w0)
    assert _outside_share(w0, after) > 0.5                        # negative control: plain GKD leaves span(V_K)
