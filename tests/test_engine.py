"""The module-major engine: same numbers whatever the layout, each tensor read once, clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from opd_dynamics import analyze, open_run
from opd_dynamics.engine import run_metrics
from opd_dynamics.errors import CheckpointError, OPDError
from opd_dynamics.metrics.registry import DEFAULT_METRICS, Spec
from opd_dynamics.table import COLUMNS, load, load_manifest


def _copy_run(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_sharded_and_unsharded_copies_give_identical_tables(synthetic_runs, sharded_opd):
    a = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], progress=False)
    b = analyze([sharded_opd], base=synthetic_runs["base"], names=["opd"], progress=False)
    pd.testing.assert_frame_equal(a, b)


def test_engine_reads_each_tensor_of_each_checkpoint_once(synthetic_runs):
    run = open_run(synthetic_runs["opd"], base=synthetic_runs["base"])
    specs = [Spec(m) for m in DEFAULT_METRICS] + [Spec("subspace_locking"), Spec("rank1_pca_evr")]
    rows = run_metrics([run], specs, progress=False)
    n_tensors = len(run.base.keys()) - 0
    assert run.base.reads == n_tensors
    for ck in run.steps.values():
        assert ck.reads == n_tensors
    assert rows


def test_against_prev_and_fixed_step_match_manual_differences(synthetic_runs):
    name = "model.layers.1.mlp.down_proj.weight"
    sd = {s: load_file(synthetic_runs["opd"] / f"checkpoint-{s}" / "model.safetensors")[name].double()
          for s in (1, 2, 4, 8)}
    sd[0] = load_file(synthetic_runs["base"] / "model.safetensors")[name].double()
    for against, pairs in (("prev", {1: 0, 2: 1, 4: 2, 8: 4}), (2, {1: 2, 4: 2, 8: 2})):
        df = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], metrics=["frobenius", "spectral_norm"],
                     select=[f"name={name}"], against=against, progress=False)
        for step, ref in pairs.items():
            d = (sd[step] - sd[ref]).numpy()
            got = df[(df.step == step) & (df.metric == "spectral_norm")]
            assert int(got.ref_step.iloc[0]) == ref
            assert got.value.iloc[0] == pytest.approx(np.linalg.svd(d, compute_uv=False)[0], rel=1e-5)


def test_table_shape_kinds_layers_and_selection(synthetic_runs):
    df = analyze([synthetic_runs["opd"], synthetic_runs["rl"]], base=synthetic_runs["base"], progress=False)
    assert list(df.columns) == list(COLUMNS)
    assert set(df.run) == {"opd", "rl"}
    assert {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "embed", "lm_head",
            "norm"} <= set(df.kind)
    assert df[df.kind == "embed"].layer.isna().all() and df[df.kind == "attn_q"].layer.notna().all()
    assert not df[(df.kind == "norm") & (df.metric == "spectral_norm")].shape[0]  # vectors get no matrix metrics
    sel = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], select=["kind=mlp_*", "layer=1"],
                  metrics=["frobenius"], progress=False)
    assert set(sel.kind) == {"mlp_gate", "mlp_up", "mlp_down"} and set(sel.layer) == {1}
    one = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], select="kind=mlp_*", metrics="frobenius",
                  progress=False)  # a single clause or metric may come as a plain string, not split into letters
    assert set(one.kind) == {"mlp_gate", "mlp_up", "mlp_down"} and set(one.metric) == {"frobenius"}


def test_planted_opd_is_lower_rank_and_locked_compared_with_rl(synthetic_runs):
    from opd_dynamics.summary import table1

    df = analyze([synthetic_runs["opd"], synthetic_runs["rl"]], base=synthetic_runs["base"], progress=False)
    t = table1(df, final_only=True).set_index("run")
    assert t.loc["opd", "spectral_ratio"] > t.loc["rl", "spectral_ratio"]
    assert t.loc["opd", "effective_rank"] < t.loc["rl", "effective_rank"]
    early = table1(df).set_index(["run", "step"])
    assert early.loc[("opd", 1), "alignment_to_final"] > early.loc[("rl", 1), "alignment_to_final"]


def test_outputs_are_written_with_manifest(synthetic_runs, tmp_path):
    out = tmp_path / "res"
    df = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], metrics=["frobenius"], out=out, csv=True,
                 progress=False)
    pd.testing.assert_frame_equal(load(out), df)
    assert (out / "metrics.csv").exists()
    man = load_manifest(out)
    assert man["metrics"] == [{"name": "frobenius", "args": {}}]
    assert man["runs"][0]["checkpoint_dtypes"] == {"float32": len(open_run(synthetic_runs["opd"],
                                                                            base=synthetic_runs["base"]).base.keys())}
    assert "torch" in man["versions"]


def _edit(run_dir, step, fn):
    f = run_dir / f"checkpoint-{step}" / "model.safetensors"
    sd = load_file(f)
    fn(sd)
    save_file(sd, f, metadata={"format": "pt"})


@pytest.mark.parametrize("problem,match", [
    ("shape", r"has shape \[3, 3\], the base has"),
    ("missing", "is missing"),
    ("extra", "is not in the base"),
    ("nan", "has NaN/Inf values"),
])
def test_inconsistent_checkpoints_fail_before_writing(synthetic_runs, tmp_path, problem, match):
    run = _copy_run(synthetic_runs["opd"], tmp_path / "run")
    name = "model.layers.0.self_attn.q_proj.weight"

    def edit(sd):
        if problem == "shape":
            sd[name] = torch.zeros(3, 3)
        elif problem == "missing":
            del sd[name]
        elif problem == "extra":
            sd["model.layers.9.mlp.up_proj.weight"] = torch.zeros(2, 2)
        else:
            sd[name][0, 0] = float("nan")

    _edit(run, 4, edit)
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match=match) as e:
        analyze([run], base=synthetic_runs["base"], out=out, progress=False)
    assert "checkpoint-4" in str(e.value)
    assert not out.exists() or not any(out.iterdir())


def test_nonfinite_can_be_recorded_as_nan(synthetic_runs, tmp_path):
    run = _copy_run(synthetic_runs["opd"], tmp_path / "run")
    name = "model.layers.0.self_attn.q_proj.weight"
    _edit(run, 4, lambda sd: sd[name].__setitem__((0, 0), float("inf")))
    with pytest.warns(UserWarning, match="recorded as NaN"):
        df = analyze([run], base=synthetic_runs["base"], nonfinite="nan", progress=False)
    bad = df[(df.module == name) & (df.step == 4)]
    assert bad.value.isna().all() and len(bad) > 0
    assert df[(df.module != name)].value.notna().any()


def test_unknown_options_are_clear_errors(synthetic_runs):
    with pytest.raises(OPDError, match="did you mean"):
        analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], metrics=["effective_rnk"], progress=False)
    with pytest.raises(OPDError, match="no checkpoint for step"):
        analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], steps=[3], progress=False)
    with pytest.raises(OPDError, match="matches no kind"):
        analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], select=["kind=mlp_sideways"], progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_one_is_a_clear_error(synthetic_runs):
    with pytest.raises(OPDError, match="no CUDA"):
        analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], device="cuda", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (exercised on the GPU machine)")
def test_gpu_path_matches_cpu(synthetic_runs):
    a = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], device="cpu", progress=False)
    b = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], device="cuda", progress=False)
    np.testing.assert_allclose(a.value.to_numpy(), b.value.to_numpy(), rtol=1e-5, atol=1e-7)


def test_bf16_base_with_fp32_checkpoints(tmp_path):
    from opd_dynamics.synthetic import make_synthetic_runs

    p = make_synthetic_runs(tmp_path / "a", steps=(1, 2), layers=1, hidden=16, kinds=("opd",))
    bf = make_synthetic_runs(tmp_path / "b", steps=(1,), layers=1, hidden=16, kinds=(), dtype="bfloat16")
    df = analyze([p["opd"]], base=bf["base"], metrics=["frobenius"], progress=False)
    name = "model.layers.0.mlp.up_proj.weight"
    raw0 = load_file(bf["base"] / "model.safetensors")[name]
    raw1 = load_file(p["opd"] / "checkpoint-1" / "model.safetensors")[name]
    assert (raw0.dtype, raw1.dtype) == (torch.bfloat16, torch.float32)  # the mixed case this test is about
    w0, w1 = raw0.double(), raw1.double()
    got = df[(df.module == name) & (df.step == 1)].value.iloc[0]
    assert got == pytest.approx(float((w1 - w0).norm()), rel=1e-6)  # both upcast, then subtracted
    # neither rounded to the other's dtype: either would move ‖ΔW‖_F by ~1e-3 relative here
    assert got != pytest.approx(float((raw1.bfloat16().double() - w0).norm()), rel=1e-5)
    assert got != pytest.approx(float((w1 - load_file(p["base"] / "model.safetensors")[name].double()).norm()),
                                rel=1e-5)  # and the bf16 base was the one used, not run a's own fp32 W₀


def test_big_tensors_are_read_on_demand_with_identical_results(synthetic_runs, monkeypatch):
    import opd_dynamics.engine as engine

    a = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], progress=False)
    monkeypatch.setattr(engine, "PREFETCH_MAX_BYTES", 2048)  # most tensors now count as "big"
    run = open_run(synthetic_runs["opd"], base=synthetic_runs["base"])
    rows = run_metrics([run], [Spec(m) for m in DEFAULT_METRICS], progress=False)
    b = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert run.base.reads == len(run.base.keys()) and rows


def test_blockwise_difference_and_norm_match_float64():
    from opd_dynamics import linalg

    g = torch.Generator().manual_seed(0)
    a = torch.randn(700, 300, generator=g)
    b = torch.randn(300, 700, generator=g).to(torch.bfloat16).T  # bf16 and non-contiguous, like a Conv1D view
    monkey = linalg.BLOCK_ELEMS
    try:
        linalg.BLOCK_ELEMS = 5000  # force many blocks
        d = linalg.difference(a, b)
        f = linalg.frobenius(b)
    finally:
        linalg.BLOCK_ELEMS = monkey
    assert d.dtype == torch.float32
    assert torch.equal(d, a - b.float())
    assert f == pytest.approx(float(b.double().norm()), rel=1e-12)
