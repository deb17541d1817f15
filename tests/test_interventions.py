"""The patch-score-restore engine: exact identity / revert, bitwise restore, reads, errors, studies and replay."""
from __future__ import annotations

import pytest
import torch
from intervention_fixtures import tiny_task
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from opd_dynamics.edits import EditSpec
from opd_dynamics.errors import OPDError
from opd_dynamics.evaluators import EvalContext, EvalSpec, TaskSpec
from opd_dynamics.interventions import InterventionEngine, study_frame
from opd_dynamics.plans import Plan, Rule
from opd_dynamics.table import validate

IDENTITY = Plan("t", "identity", rules=(Rule((), EditSpec("identity")),))
REVERT = Plan("t", "revert", rules=(Rule((), EditSpec("revert")),))


@pytest.fixture(scope="module")
def engine(tiny_llama_runs):
    paths = tiny_llama_runs
    eng = InterventionEngine(paths["base"], cache_mb=0)
    return eng, eng.open_run(paths["run"], name="opd"), paths


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def evaluators(eng):
    ctx = EvalContext(tiny_task(6), eng.tokenizer, progress=False)
    return [EvalSpec("loglik").build(ctx), EvalSpec("accuracy").build(ctx)]


def test_identity_scores_exactly_like_the_final_checkpoint(engine):
    eng, run, paths = engine
    final = AutoModelForCausalLM.from_pretrained(str(paths["run"] / "checkpoint-4"), dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    evs = evaluators(eng)
    with eng.applied(IDENTITY, run) as model:
        assert same(snapshot(model), snapshot(final))  # bitwise: W0 + (W_T - W0) in float64 rounds back to W_T
        patched = [ev(model) for ev in evs]
    assert patched == [ev(final) for ev in evs]


def test_revert_everything_scores_exactly_like_w0(engine):
    eng, run, paths = engine
    before = snapshot(eng.model)
    evs = evaluators(eng)
    with eng.applied(REVERT, run) as model:
        assert same(snapshot(model), before)
        assert eng.last.reads == 0 and eng.last.tensors == []
        patched = [ev(model) for ev in evs]
    assert patched == [ev(eng.model) for ev in evs]


def test_restore_is_bitwise_even_after_an_error(engine):
    eng, run, _ = engine
    before = snapshot(eng.model)
    plan = Plan("t", "mix", rules=(Rule(("kind=mlp_*",), EditSpec("spectral", {"percent": 50})),
                                   Rule(("kind=attn_*",), EditSpec("scale", {"alpha": 1.7})),
                                   Rule((), EditSpec("norm_rescale", {"beta": 0.5}))), source="25%")
    with eng.applied(plan, run) as model:
        assert not same(snapshot(model), before)
    assert same(snapshot(eng.model), before)
    with pytest.raises(RuntimeError, match="boom"):
        with eng.applied(plan, run):
            raise RuntimeError("boom")
    assert same(snapshot(eng.model), before)


def test_only_touched_modules_are_read_and_edited(engine):
    eng, run, paths = engine
    ck = run.steps[4]
    plan = Plan("t", "window", rules=(Rule(("kind=mlp_*", "layer=1-2"), EditSpec("identity")),))
    r0 = ck.reads
    with eng.applied(plan, run) as model:
        live = snapshot(model)
    assert ck.reads - r0 == 6 == eng.last.reads  # gate/up/down of two layers, one read each
    final, base = load_file(str(paths["run"] / "checkpoint-4" / "model.safetensors")), snapshot(eng.model)
    for name in base:
        inside = ".mlp." in name and any(f"layers.{i}." in name for i in (1, 2))
        assert torch.equal(live[name], final[name] if inside else base[name]), name
    # a rescale needs ΔW_T as well: two reads per touched tensor
    plan = Plan("t", "early", rules=(Rule(("kind=attn_q",), EditSpec("norm_rescale")),), source="1")
    with eng.applied(plan, run):
        pass
    assert eng.last.reads == 2 * 4 and eng.last.steps == {"source": 1, "final": 4}


def test_update_norm_is_the_global_frobenius_norm(engine):
    eng, run, paths = engine
    final, base = load_file(str(paths["run"] / "checkpoint-4" / "model.safetensors")), snapshot(eng.model)
    want = sum(float((final[k].double() - base[k].double()).square().sum()) for k in final) ** 0.5
    with eng.applied(Plan("t", rules=(Rule((), EditSpec("scale", {"alpha": 0.5})),)), run):
        pass
    assert eng.last.update_norm == pytest.approx(0.5 * want, rel=1e-12)


def test_clear_errors(engine):
    eng, run, _ = engine
    from opd_dynamics.studies.sliding_window import window

    with pytest.raises(OPDError, match="outside the model's layers 0..3"):
        window(4, 1, eng.n_layers)
    with pytest.raises(OPDError, match="matches no module"):
        with eng.applied(Plan("t", rules=(Rule(("layer=9-12",), EditSpec("identity")),)), run):
            pass
    with pytest.raises(OPDError, match="needs a matrix"):
        with eng.applied(Plan("t", rules=(Rule(("kind=norm",), EditSpec("spectral")),)), run):
            pass
    with pytest.raises(OPDError, match="no checkpoint at step 3"):
        with eng.applied(Plan("t", rules=(Rule((), EditSpec("identity")),), source="3"), run):
            pass


def test_gpt2_fused_qkv_edits_only_its_slice(tiny_gpt2_runs):
    paths = tiny_gpt2_runs
    eng = InterventionEngine(paths["base"])
    run = eng.open_run(paths["run"])
    base = snapshot(eng.model)
    final = load_file(str(paths["run"] / "checkpoint-2" / "model.safetensors"))
    name = "transformer.h.0.attn.c_attn.weight"  # Conv1D (in, out) = (16, 48): q is columns 0..15
    with eng.applied(Plan("t", rules=(Rule(("kind=attn_q", "layer=0"), EditSpec("identity")),)), run) as model:
        w = model.state_dict()[name]
        assert torch.equal(w[:, :16], final[name][:, :16]) and torch.equal(w[:, 16:], base[name][:, 16:])
    assert same(snapshot(eng.model), base)


def test_studies_write_replayable_results(engine, tmp_path):
    from opd_dynamics.plots.interventions import figure
    from opd_dynamics.studies import norm_scaling, replay, sliding_window

    eng, run, paths = engine
    task = TaskSpec("lab", preset="tiny", seed=0)
    common = dict(base=paths["base"], task=task, evaluators=["loglik:limit=4"], engine=eng, progress=False)
    df = norm_scaling(paths["run"], alphas=[0.0, 1.0], out=tmp_path / "ns", **common)
    validate(df)
    frame = study_frame(df)
    ref = frame.set_index("variant")["value"]
    assert ref["reference:base"] == frame[frame.x == 0.0]["value"].item()
    assert ref["reference:final"] == frame[frame.x == 1.0]["value"].item()
    res = replay(tmp_path / "ns" / "manifest.json", progress=False)
    assert res.compared == 8 and res.max_abs_diff == 0.0
    sw = sliding_window(paths["run"], centres=[0, 3], **common)
    plan_rows = sw[sw.module.str.startswith("plan:sliding_window/mlp/")]
    assert sorted(plan_rows.layer.dropna().unique().tolist()) == [0, 3]
    assert (sw.metric == "frobenius").sum() == 4 * 7  # the bars: every attention/MLP matrix at the final step
    figure(sw).savefig(tmp_path / "sw.png")
    with pytest.raises(OPDError, match="outside the model's layers"):
        sliding_window(paths["run"], centres=[7], **common)


def test_cli_commands(tmp_path, tiny_llama_runs):
    import typer
    from typer.testing import CliRunner

    from opd_dynamics_cli import interventions as cli

    app = typer.Typer()
    app.add_typer(cli.app, name="interventions")
    app.command("replay")(cli.replay_cmd)
    paths = tiny_llama_runs
    args = ["interventions", "norm-scaling", str(paths["run"]), "--base", str(paths["base"]), "--task", "lab:tiny",
            "-e", "loglik:limit=2", "--alphas", "0,1", "-o", str(tmp_path / "ns"), "--figure", str(tmp_path / "ns.png")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "reference:final" in res.output and (tmp_path / "ns.png").exists()
    res = CliRunner().invoke(app, ["replay", str(tmp_path / "ns"), "-q"])
    assert res.exit_code == 0 and "max |Δ| = 0" in res.output, res.output
    res = CliRunner().invoke(app, ["interventions", "sliding-window", str(paths["run"]), "--base", str(paths["base"]),
                                   "--task", "lab:tiny", "--centres", "9"])
    assert isinstance(res.exception, OPDError) and "outside the model's layers" in str(res.exception)
