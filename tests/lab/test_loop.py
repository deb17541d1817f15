"""The shared training loop: checkpoint schedule, step hooks that edit weights, early stopping."""

import json

import pytest
import torch
from safetensors.torch import load_file

from opd_dynamics.lab import (ModelSpec, SFTStep, TrainConfig, build_model, char_tokenizer, checkpoint_steps,
                              make_task, train)


@pytest.mark.parametrize("total,every,expected", [
    (1, 0, [1]), (5, 0, [1, 2, 4, 5]), (64, 16, [1, 2, 4, 8, 16, 32, 48, 64]), (10, 3, [1, 2, 3, 4, 6, 8, 9, 10]),
])
def test_checkpoint_steps(total, every, expected):
    assert checkpoint_steps(total, every) == expected


@pytest.fixture
def setup():
    tok = char_tokenizer()
    task = make_task("tiny")
    model = build_model(ModelSpec(hidden=16, layers=2, heads=2, intermediate=32, max_positions=32), tok, 0)
    return tok, task, model, SFTStep(tok, task.examples("train"), 8, seed=0)


def test_hooks_see_every_step_and_may_edit_weights_in_place(setup, tmp_path):
    tok, task, model, step = setup
    calls, marker = [], 0.125

    def hook(m, t, log):
        calls.append((t, "loss" in log))
        log["hook_ran"] = True
        if t == 2:  # what an EffOPD extrapolation does: overwrite weights in place
            with torch.no_grad():
                m.model.layers[0].mlp.down_proj.weight.fill_(marker)

    history = train(model, tok, step, TrainConfig(steps=3, lr=1e-3), run_dir=tmp_path, step_hooks=[hook],
                    progress=False)
    assert calls == [(1, True), (2, True), (3, True)]
    assert all(h["hook_ran"] for h in history)
    saved = load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    assert torch.all(saved["model.layers.0.mlp.down_proj.weight"] == marker)  # saved after the hook
    after = load_file(str(tmp_path / "checkpoint-3" / "model.safetensors"))["model.layers.0.mlp.down_proj.weight"]
    assert not torch.all(after == marker)  # the optimizer went on training the edited weights
    assert (after - marker).abs().max() < 0.01  # ... from where the hook left them
    state = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"]] == [1, 2, 3]


def test_stops_once_the_target_accuracy_is_reached(setup):
    tok, task, model, step = setup
    evaluations = iter([0.0, 0.1, 0.6, 0.9])
    history = train(model, tok, step, TrainConfig(steps=50, eval_every=2, stop_at_accuracy=0.5),
                    evaluate=lambda m: {"eval_accuracy": next(evaluations)}, progress=False)
    assert [h["step"] for h in history if "eval_accuracy" in h] == [0, 2, 4]
    assert history[-1]["step"] == 4


def test_learning_rate_schedule(setup):
    tok, task, model, step = setup
    history = train(model, tok, step, TrainConfig(steps=4, lr=1.0, warmup=2, schedule="cosine"), progress=False)
    # the Hugging Face convention (get_cosine_schedule_with_warmup): the step-t rate is factor(t − 1)
    assert [round(h["learning_rate"], 4) for h in history] == [0.5, 1.0, 1.0, 0.5]
