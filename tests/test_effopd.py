"""EffOPD search: planted objectives, online == replay, the reference-trainer hook and a real HF Trainer callback."""
from __future__ import annotations

import json

import pytest
import torch

from opd_dynamics.effopd import EffOPD, extrapolated_names, search, search_model
from opd_dynamics.effopd.replay import load_weights, replay
from opd_dynamics.errors import OPDError
from opd_dynamics.io.checkpoint import Checkpoint
from opd_dynamics.synthetic import tiny_llama


def _body(model):
    return {n: p for n, p in model.named_parameters() if n in extrapolated_names(dict(model.named_parameters()))}


def _distance_score(target):
    def score(model):
        return -sum(float(((p.detach() - target[n]) ** 2).sum()) for n, p in _body(model).items())
    return score


def _away_from(model):
    """A planted score: distance of the body weights from where they are now (W₀). Any straight line out of W₀ gains
    with every step, so the first search must go as far as allowed (k = 5)."""
    start = {n: p.detach().clone() for n, p in _body(model).items()}

    def score(m):
        return sum(float(((p.detach() - start[n]) ** 2).sum()) for n, p in _body(m).items()) ** 0.5
    return score


def _snapshots():
    """Two callbacks recording the body weights at on_train_begin and every on_step_end; placed before and after
    EffOPDCallback they see each step's weights before and after its search."""
    from transformers import TrainerCallback

    class Snap(TrainerCallback):
        def __init__(self):
            self.at = {}

        def on_train_begin(self, args, state, control, model=None, **kw):
            self.at[0] = {n: p.detach().clone() for n, p in _body(model).items()}

        def on_step_end(self, args, state, control, model=None, **kw):
            self.at[state.global_step] = {n: p.detach().clone() for n, p in _body(model).items()}
    return Snap(), Snap()


def _check_trainer_searches(log_history, before, after, steps):
    """Each logged search left the model at W_t + 2k·Δ (Δ from the previous search's accepted weights, EffOPD §4),
    the first one extrapolated all the way, and training continued from the extrapolated weights."""
    searches = [e for e in log_history if "effopd_accepted_k" in e]
    assert [e["step"] for e in searches] == steps
    assert searches[0]["effopd_accepted_k"] == 5 and searches[0]["effopd_multiplier"] == 10
    for e in searches:
        t, k = e["step"], e["effopd_accepted_k"]
        assert e["effopd_evaluations"] == min(k + 2, 6)  # W_t, the accepted candidates, the first refused one
        assert e["effopd_best"] == pytest.approx(max(e["effopd_scores"][:k + 1]), abs=1e-6)
        anchor = after.at[t // 2] if t > 1 else before.at[0]
        for n, w in before.at[t].items():
            torch.testing.assert_close(after.at[t][n], w + 2 * k * (w - anchor[n]), rtol=1e-5, atol=1e-6)
    dist = lambda a, b: sum(float((a[n] - b[n]).norm() ** 2) for n in a) ** 0.5  # noqa: E731
    assert dist(before.at[2], after.at[1]) < 0.5 * dist(before.at[2], before.at[1])


def test_only_attention_and_mlp_matrices_are_extrapolated():
    names = extrapolated_names(dict(tiny_llama().named_parameters()))
    assert names and all(("self_attn" in n or "mlp" in n) and n.endswith(".weight") for n in names)
    assert not any("norm" in n or "embed" in n or "lm_head" in n for n in names)


@pytest.mark.parametrize("rule,expect", [(">=", 3), (">", 1)])
def test_acceptance_rule_and_stop_at_first_failure(rule, expect):
    scores = {0: 0.1, 1: 0.2, 2: 0.2, 3: 0.2, 4: 0.1, 5: 0.9}  # k=5 is never tried: the search stops at k=4
    r = search(lambda k: scores[k], rule=rule)
    assert r.accepted_k == expect and r.multiplier == 2 * expect
    assert len(r.scores) == (5 if rule == ">=" else 3)
    with pytest.raises(OPDError):
        search(lambda k: 0.0, rule="=>")


def test_optimum_along_the_line_accepts_the_largest_k():
    model = tiny_llama(seed=1)
    w_prev = {n: p.detach().clone() for n, p in _body(model).items()}
    torch.manual_seed(0)
    delta = {n: 1e-3 * torch.randn_like(p) for n, p in w_prev.items()}
    with torch.no_grad():
        for n, p in _body(model).items():
            p.add_(delta[n])
    target = {n: w_prev[n] + 100 * delta[n] for n in delta}  # far along the same straight line
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    r = search_model(model, delta, _distance_score(target))
    assert r.accepted_k == 5 and r.scores == sorted(r.scores)
    for n, p in model.named_parameters():  # left at W_t + 10Δ on body weights, untouched elsewhere
        want = before[n] + 10 * delta[n] if n in delta else before[n]
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-6)


def test_score_that_drops_after_any_step_keeps_plain_opd_and_restores_bitwise():
    model = tiny_llama(seed=2)
    here = {n: p.detach().clone() for n, p in _body(model).items()}
    delta = {n: torch.full_like(p, 1e-3) for n, p in here.items()}
    snapshot = {n: p.detach().clone() for n, p in model.state_dict().items()}
    r = search_model(model, delta, _distance_score(here))
    assert r.accepted_k == 0 and len(r.scores) == 2
    for n, t in model.state_dict().items():
        assert torch.equal(t, snapshot[n]), n


def test_replay_and_online_accept_the_same_k(synthetic_runs):
    base = synthetic_runs["base"]
    run = synthetic_runs["opd"]
    model = tiny_llama()
    final = Checkpoint(run / "checkpoint-8")
    names = extrapolated_names(dict(model.named_parameters()))
    target = {n: final.get_tensor(n).float() * 1.0 for n in names}
    # a target a little beyond step 8 along the planted direction: extrapolating early steps should pay
    c4 = Checkpoint(run / "checkpoint-4")
    target = {n: target[n] + 0.5 * (target[n] - c4.get_tensor(n).float()) for n in names}
    score = _distance_score(target)
    report = replay(run, score, base=base, model=model, progress=False)
    assert set(report.summary.step) == {1, 2, 4, 8}
    assert "cannot see" in report.format()
    for t in (2, 4, 8):
        online = EffOPD(score)
        load_weights(model, Checkpoint(run / f"checkpoint-{t // 2}"))
        online.start(model)
        load_weights(model, Checkpoint(run / f"checkpoint-{t}"))
        res = online.after_step(model, t)
        want = int(report.summary.set_index("step").loc[t, "accepted_k"])
        assert res.accepted_k == want, t
        rep_scores = report.searches[report.searches.step == t].score.tolist()
        assert res.scores == pytest.approx(rep_scores, rel=1e-9)
    assert (report.summary.accepted_k > 0).any()


def test_online_hook_in_the_reference_loop_moves_the_anchor():
    model = tiny_llama(seed=3)
    target = {n: p.detach() + 1.0 for n, p in _body(model).items()}
    hook = EffOPD(_distance_score(target), model)
    torch.manual_seed(0)
    for step in range(1, 9):  # a fake optimizer step towards the target, then the hook
        with torch.no_grad():
            for n, p in _body(model).items():
                p.add_(0.01 * (target[n] - p))
        log = {}
        hook(model, step, log)
        assert ("effopd_accepted_k" in log) == (step in (1, 2, 4, 8))
    assert [r.step for r in hook.history] == [1, 2, 4, 8]
    assert hook.history[0].accepted_k == 5  # a straight path to the target: go as far as allowed
    assert all(r.scores[0] <= r.best for r in hook.history)


@pytest.mark.slow
def test_callback_inside_a_real_transformers_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    from opd_dynamics.effopd.callback import EffOPDCallback

    model = tiny_llama(seed=4)
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(0, 64, (12,), generator=g)), "labels": ids.clone()} for _ in range(16)]
    first, last = _snapshots()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2,
                             save_steps=4, logging_steps=1, report_to=[], use_cpu=True, save_strategy="steps",
                             disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=data,
            callbacks=[first, EffOPDCallback(_away_from(model)), last]).train()
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    _check_trainer_searches(state["log_history"], first, last, [1, 2, 4])


@pytest.mark.slow
def test_callback_inside_trl_on_policy_distillation(tmp_path, monkeypatch):
    """TRL's GKDTrainer with lmbda=1 (student rollouts only) and beta=1 (reverse KL) is on-policy distillation."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from opd_dynamics.effopd.callback import EffOPDCallback

    from helpers import gkd_setup

    tok, llama, rows = gkd_setup(layers=2)


    student = llama(16, 0)
    first, last = _snapshots()
    args = GKDConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, lmbda=1.0, beta=1.0,
                     max_new_tokens=4, save_steps=4, logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True,
                     learning_rate=1e-2, max_length=32, seed=0)
    GKDTrainer(model=student, teacher_model=llama(32, 1), args=args, train_dataset=Dataset.from_list(rows),
               processing_class=tok, callbacks=[first, EffOPDCallback(_away_from(student)), last]).train()
    state = json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())
    _check_trainer_searches(state["log_history"], first, last, [1, 2, 4])
