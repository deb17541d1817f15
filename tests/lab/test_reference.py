"""The tiny reference runs: layout, trainer_state, reloading offline, reproducibility, caching, bf16."""

import json

import pytest
import torch
from safetensors.torch import load_file

from opd_dynamics.lab import (ARMS, build_reference_runs, char_tokenizer, checkpoint_steps, get_preset,
                              load_tokenizer, make_task, run_arm)
from opd_dynamics.lab.models import load_model

DIAGNOSTICS = ("overlap_ratio", "overlap_mass_student", "overlap_mass_teacher", "entropy_gap", "overlap_advantage")


def tensors(path):
    return load_file(str(path / "model.safetensors"))


def test_layout(tiny_runs):
    steps = checkpoint_steps(get_preset("tiny").run_steps, get_preset("tiny").save_every)
    assert set(tiny_runs.runs) == set(ARMS)
    for arm, run in tiny_runs.runs.items():
        names = sorted(p.name for p in run.iterdir())
        assert names == sorted(f"checkpoint-{s}" for s in steps), arm
        assert not (run / "checkpoint-0").exists()
    for d in [tiny_runs.teacher, tiny_runs.base, tiny_runs.runs["opd"] / f"checkpoint-{steps[-1]}"]:
        for f in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            assert (d / f).is_file(), d / f
    summary = json.loads(tiny_runs.summary.read_text())
    assert set(summary["runs"]) == set(ARMS) and summary["wall_seconds"]["total"] > 0
    assert set(tiny_runs.accuracy) == {"teacher", "base", *ARMS}


def test_trainer_state_is_hf_shaped(tiny_runs):
    run = tiny_runs.runs["opd"]
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["max_steps"] == get_preset("tiny").run_steps
    log = state["log_history"]
    assert [h["step"] for h in log] == [0, 1, 2]  # step 0: the evaluation of W0
    assert all("loss" in h for h in log[1:])
    assert all("eval_accuracy" in h and all(k in h for k in DIAGNOSTICS) for h in log)
    assert 0 <= log[-1]["overlap_ratio"] <= 1 and log[-1]["overlap_advantage"] <= 0
    rl = json.loads((tiny_runs.runs["rl"] / "checkpoint-1" / "trainer_state.json").read_text())
    assert "train_reward" in rl["log_history"][-1]


def test_checkpoints_reload_offline_with_auto_classes(tiny_runs):
    """Plain ``transformers`` Auto classes load a checkpoint offline (the test session runs with HF_HUB_OFFLINE=1,
    set by conftest before transformers is imported; nothing in opd_dynamics registers classes with them)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE  # read at import: a download attempt would fail, not fetch
    ckpt = tiny_runs.runs["rl"] / "checkpoint-4"
    m = AutoModelForCausalLM.from_pretrained(ckpt)
    for loader in (AutoTokenizer, PreTrainedTokenizerFast):
        t = loader.from_pretrained(ckpt)
        assert t.decode(t("12+3=")["input_ids"], skip_special_tokens=True) == "12+3=", loader
    ids = t("1+2=", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert m(input_ids=ids).logits.shape[-1] == len(t)
    assert load_tokenizer(ckpt)("1+2=")["input_ids"] == char_tokenizer()("1+2=")["input_ids"]


def test_tied_lm_head_is_absent_and_weights_moved(tiny_runs):
    base = tensors(tiny_runs.base)
    assert "lm_head.weight" not in base and "model.embed_tokens.weight" in base
    last = tensors(tiny_runs.runs["opd"] / "checkpoint-4")
    assert base.keys() == last.keys()
    assert any(not torch.equal(base[k], last[k]) for k in base)


@pytest.mark.parametrize("arm", ["opd", "rl", "sft"])
def test_run_is_reproducible_bit_for_bit(tiny_runs, tmp_path, arm):
    base, teacher = load_model(tiny_runs.base), load_model(tiny_runs.teacher)
    run_arm(arm, base, teacher, char_tokenizer(), make_task("tiny", 0), "tiny", tmp_path / arm, seed=0,
            progress=False)
    for step in (1, 4):
        ours, theirs = tensors(tmp_path / arm / f"checkpoint-{step}"), tensors(tiny_runs.runs[arm] / f"checkpoint-{step}")
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), (arm, step)
    assert (json.loads((tmp_path / arm / "checkpoint-4" / "trainer_state.json").read_text())
            == json.loads((tiny_runs.runs[arm] / "checkpoint-4" / "trainer_state.json").read_text()))


def test_second_call_reuses_everything(tiny_runs):
    stamp = (tiny_runs.teacher / "model.safetensors").stat().st_mtime_ns
    again = build_reference_runs(tiny_runs.out_dir, preset="tiny", seed=0, progress=False)
    assert again == tiny_runs
    assert (tiny_runs.teacher / "model.safetensors").stat().st_mtime_ns == stamp


def test_bfloat16_checkpoints_reuse_the_teacher(tiny_runs, tmp_path):
    # same out_dir, new dtype: the teacher (fp32, dtype-independent) is reused, W0 and runs are rebuilt in bf16
    import shutil
    out = tmp_path / "bf16"
    shutil.copytree(tiny_runs.out_dir, out)
    stamp = (out / "teacher" / "model.safetensors").stat().st_mtime_ns
    refs = build_reference_runs(out, preset="tiny", seed=0, dtype="bfloat16", progress=False)
    assert (out / "teacher" / "model.safetensors").stat().st_mtime_ns == stamp
    base = tensors(refs.base)
    assert {t.dtype for t in base.values()} == {torch.bfloat16}
    last = tensors(refs.runs["sft"] / "checkpoint-4")
    assert {t.dtype for t in last.values()} == {torch.bfloat16}
    # W0 is the fp32 W0 rounded once to bf16
    fp32 = tensors(tiny_runs.base)
    assert all(torch.equal(base[k], fp32[k].to(torch.bfloat16)) for k in base)


def test_bad_arguments_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="preset"):
        build_reference_runs(tmp_path, preset="huge")
    with pytest.raises(ValueError, match="dtype"):
        build_reference_runs(tmp_path, preset="tiny", dtype="float16")
    assert not any(tmp_path.iterdir())
