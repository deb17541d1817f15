"""The user's situation: a chat model trained by TRL's GKDTrainer (full and PEFT LoRA), their own chat benchmark."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from opd_dynamics.evaluators import EvalContext, EvalSpec, TaskSpec
from opd_dynamics.interventions import InterventionEngine, study_frame
from opd_dynamics.studies import STUDIES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(gkd_runs):
    return gkd_runs


def scores(df, metric):
    f = study_frame(df)
    f = f[f.metric == metric]
    return {(v, x): s for v, x, s in zip(f.variant, f.x.fillna(-1), f.value)}


@pytest.mark.parametrize("source", ["jsonl", "dataset"])
def test_gkd_chat_model_scores_with_default_task_options_and_norm_scaling_rises(runs, source):
    task = str(runs["jsonl"]) if source == "jsonl" else f"dataset:{runs['dataset']}"
    df = STUDIES["norm_scaling"](runs["full"], base=runs["base"], task=task, evaluators=["accuracy", "loglik"],
                                 alphas=[0, 0.5, 1], progress=False)
    acc, ll = scores(df, "accuracy"), scores(df, "loglik")
    assert acc[("reference:final", -1)] > 0 and acc[("", 1.0)] == acc[("reference:final", -1)]
    assert acc[("", 0.0)] == acc[("reference:base", -1)] < acc[("", 1.0)]   # W₀ knows products, not sums
    assert ll[("", 0.0)] < min(ll[("", 0.5)], ll[("", 1.0)])   # rises from W₀ (not necessarily monotone)


def test_every_study_and_effopd_replay_run_on_a_lora_gkd_run(runs, tmp_path):
    from opd_dynamics.effopd.replay import replay

    common = dict(base=runs["base"], task=str(runs["jsonl"]), evaluators=["loglik:split=train"], progress=False)
    eng = InterventionEngine(runs["base"])
    grids = {"sliding_window": dict(h=1, centres=[0]), "norm_scaling": dict(alphas=[0, 1]),
             "embedding_revert": {}, "spectral_partition": dict(percents=[10, 100]),
             "early_rescale": dict(at=[25], betas=[0, 1]), "subspace_projection": dict(at="25%", k=2)}
    for study, kw in grids.items():
        run = [runs["lora"], runs["full"]] if study == "subspace_projection" else runs["lora"]
        df = STUDIES[study](run, engine=eng, out=tmp_path / study, **common, **kw)
        assert df["value"].notna().all() and len(study_frame(df)), study
    ns = scores(STUDIES["norm_scaling"](runs["lora"], engine=eng, alphas=[1], **common), "loglik:split=train")
    assert ns[("", 1.0)] == ns[("reference:final", -1)] > ns[("reference:base", -1)]
    ctx = EvalContext(TaskSpec.parse(str(runs["jsonl"])).build(), eng.tokenizer, progress=False)
    score = EvalSpec.parse("accuracy:split=train,limit=4").build(ctx)
    report = replay(eng.open_run(runs["lora"]), score, model=eng.model, progress=False)
    assert set(report.summary.step) == {1, 2, 4, 8, 16, 32, 64}


def test_alpha_one_reproduces_the_merged_lora_model_exactly(runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from opd_dynamics.edits import EditSpec
    from opd_dynamics.plans import Plan, Rule

    eng = InterventionEngine(runs["base"])
    run = eng.open_run(runs["lora"])
    base = AutoModelForCausalLM.from_pretrained(str(runs["base"]), dtype=torch.float32, attn_implementation="eager")
    merged = PeftModel.from_pretrained(base, str(run.steps[run.final_step].path)).merge_and_unload().eval()
    task = TaskSpec.parse(str(runs["jsonl"]) + ":test", stop=["\n"]).build()   # the LoRA student rambles on
    ctx = EvalContext(task, eng.tokenizer, progress=False)
    evs = [EvalSpec.parse(e).build(ctx) for e in ("accuracy", "loglik", "accuracy:checker=math")]
    want = [ev(merged) for ev in evs]
    untouched = {k: v.clone() for k, v in eng.model.state_dict().items() if "lm_head" in k or "embed" in k or "norm" in k}
    alpha_one = Plan("norm_scaling", "", 1.0, (Rule((), EditSpec("scale", {"alpha": 1.0})),))
    with eng.applied(alpha_one, run) as model:
        for name, t in merged.state_dict().items():
            assert torch.equal(model.state_dict()[name], t), name             # bitwise PEFT's merge
        for name, t in untouched.items():
            assert torch.equal(model.state_dict()[name], t), name             # the adapter left these alone
        got = [ev(model) for ev in evs]
    assert got == want and want[0] > 0
    assert not any(n.startswith(("lm_head", "model.embed", "model.norm")) for n in eng.last.tensors)


def test_norm_scaling_cli_on_a_lora_run(runs, tmp_path):
    r = subprocess.run([sys.executable, "-m", "opd_dynamics_cli.app", "interventions", "norm-scaling", runs["lora"],
                        "--base", runs["base"], "--task", runs["jsonl"], "--alphas", "0,1", "-e", "accuracy",
                        "-e", "accuracy:checker=math", "--answer-regex", r"^\s*(\d+)", "-o", tmp_path / "o", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    import json

    m = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert m["answer_checking"]["accuracy"]["checker"] == "exact"
    assert m["answer_checking"]["accuracy:checker=math"]["extraction"].startswith("regex ^\\s*(\\d+)")
    assert m["task"]["answer_regex"] == r"^\s*(\d+)"


def test_effopd_callback_scores_chat_validation_prompts_in_a_trl_run(runs, tmp_path):
    import json

    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from chat_fixtures import ROWS, chat_tokenizer
    from opd_dynamics.effopd.callback import EffOPDCallback

    tok = chat_tokenizer()
    cb = EffOPDCallback(task=str(runs["jsonl"]), evaluator="accuracy:split=train,limit=4,checker=math",
                        task_options={"limit": 8})
    args = GKDConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=8, lmbda=0.0, beta=0.0,
                     max_new_tokens=4, save_steps=2, report_to=[], use_cpu=True, disable_tqdm=True, learning_rate=3e-3,
                     max_length=32, seed=0, save_only_model=True)
    GKDTrainer(model=AutoModelForCausalLM.from_pretrained(str(runs["base"])),
               teacher_model=AutoModelForCausalLM.from_pretrained(str(runs["teacher"])), args=args,
               train_dataset=Dataset.from_list(ROWS), processing_class=tok, callbacks=[cb]).train()
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "effopd_accepted_k" in e] == [1, 2]
    assert cb.evaluator.details["checker"] == "math" and cb.evaluator.name.startswith("accuracy")
