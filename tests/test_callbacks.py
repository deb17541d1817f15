"""In-training callbacks: geometry and token diagnostics reach TensorBoard from HF Trainer, TRL GKDTrainer and the
reference loop, and the geometry equals what ``analyze`` finds in the checkpoint saved at the same step."""
from __future__ import annotations

import math

import pytest
import torch

from opd_dynamics.callbacks import GeometryCallback, TokenDiagnosticsCallback
from opd_dynamics.errors import OPDError
from opd_dynamics.synthetic import tiny_llama

pytest.importorskip("tensorboard", reason='pip install -e ".[test]"')


def _scalars(logdir) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(f.parent))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


@pytest.mark.slow
def test_geometry_in_a_real_trainer_matches_analyze_of_the_saved_checkpoint(tmp_path, monkeypatch):
    from transformers import Trainer, TrainingArguments

    from opd_dynamics import analyze
    from opd_dynamics.summary import table1

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    model = tiny_llama(hidden=16, layers=1, seed=4)
    model.save_pretrained(tmp_path / "base")
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": (ids := torch.randint(0, 64, (12,), generator=g)), "labels": ids.clone()} for _ in range(8)]
    metrics = ["spectral_norm", "spectral_ratio", "effective_rank", "principal_angles:k=4"]
    cb = GeometryCallback(metrics)  # at each save
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
                             learning_rate=1e-2, save_steps=2, logging_steps=1, report_to=["tensorboard"],
                             use_cpu=True, save_strategy="steps", disable_tqdm=True, seed=0)
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()
    tb = _scalars(tmp_path / "tb")
    assert set(tb["train/geometry/spectral_ratio"]) == {2, 4}
    # report_to integrations file trainer logs under train/ (transformers' rewrite_logs)
    assert {"train/geometry/spectral_ratio/attn_q", "train/geometry/spectral_ratio/layer_00",
            "train/geometry/cost_share", "train/geometry/principal_angle_left_max/mlp_up", "train/loss"} <= set(tb)
    df = analyze([tmp_path / "run"], base=tmp_path / "base", metrics=metrics, select=["kind=body"], progress=False)
    offline = table1(df).set_index("step")
    for step in (2, 4):
        for m in ("spectral_norm", "spectral_ratio", "effective_rank", "principal_angle_left_mean"):
            assert tb[f"train/geometry/{m}"][step] == pytest.approx(offline.loc[step, m], rel=1e-4), (m, step)
    assert all(0 < e["geometry/cost_s"] for e in cb.history)


@pytest.mark.slow
def test_both_callbacks_in_trl_on_policy_distillation(tmp_path, monkeypatch):
    """TRL's GKDTrainer with lmbda=1 (student rollouts) and beta=1 (reverse KL): on-policy distillation."""
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    from datasets import Dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from helpers import gkd_setup

    tok, llama, rows = gkd_setup(layers=1)

    probe = tok(["1+2=3", "2+2=4"], return_tensors="pt", padding=True)
    geo = GeometryCallback(["spectral_ratio", "stable_rank"], every=2)
    tokens = TokenDiagnosticsCallback(probe, every=2, k=4)
    args = GKDConfig(output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4, lmbda=1.0,
                     beta=1.0, max_new_tokens=4, save_strategy="no", logging_steps=1, report_to=["tensorboard"],
                     use_cpu=True, disable_tqdm=True, learning_rate=1e-2, max_length=32, seed=0)
    GKDTrainer(model=llama(16, 0), teacher_model=llama(32, 1), args=args, train_dataset=Dataset.from_list(rows),
               processing_class=tok, callbacks=[geo, tokens]).train()
    tb = _scalars(tmp_path / "tb")
    for tag in ("tokens/overlap_ratio", "tokens/overlap_mass_student", "tokens/entropy_gap",
                "tokens/overlap_advantage", "tokens/cost_share", "geometry/spectral_ratio", "geometry/cost_share"):
        assert set(tb["train/" + tag]) == {2, 4}, tag
    assert all(0 <= v <= 1 for v in tb["train/tokens/overlap_ratio"].values())
    assert all(v <= 1e-6 for v in tb["train/tokens/overlap_advantage"].values())  # −KL on the overlap


def test_token_diagnostics_of_a_model_against_itself():
    model = tiny_llama(hidden=16, layers=1)
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    cb = TokenDiagnosticsCallback({"input_ids": ids}, teacher=model, every=1, k=4)
    logs = cb._run(model, 1)
    assert logs["tokens/overlap_ratio"] == 1.0 and abs(logs["tokens/entropy_gap"]) < 1e-12
    assert math.isnan(logs["tokens/cost_share"])  # no training step timed yet


def test_geometry_hook_in_the_reference_loop(tmp_path):
    from opd_dynamics.lab.loop import TrainConfig, train
    from opd_dynamics.lab.tokenizer import char_tokenizer

    model, tok = tiny_llama(hidden=16, layers=1, seed=1), char_tokenizer()
    ids = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(0))
    cb = GeometryCallback(["spectral_norm", "frobenius"], every=2, per_layer=False)
    cb.start(model)

    def step_fn(m, step):
        return m(input_ids=ids, labels=ids).loss, {}

    history = train(model, tok, step_fn, TrainConfig(steps=4, lr=1e-2), step_hooks=[cb], progress=False)
    logged = [h for h in history if "geometry/spectral_norm" in h]
    assert [h["step"] for h in logged] == [2, 4]
    assert logged[1]["geometry/frobenius"] > 0 and 0 < logged[1]["geometry/cost_share"]
    assert "geometry/frobenius/mlp_up" in logged[0] and not any("layer_" in k for k in logged[0])


def test_trajectory_metrics_are_refused_with_the_way_out():
    with pytest.raises(OPDError, match="needs the final step"):
        GeometryCallback(["alignment_to_final"])
