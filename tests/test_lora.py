"""LoRA runs: PEFT adapters written by hand (no peft install) must give the numbers of the merged checkpoints."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from opd_dynamics import CheckpointError, OPDError, analyze, available_metrics, linalg, open_run
from opd_dynamics.io.checkpoint import Checkpoint
from opd_dynamics.io.lora import LoraCheckpoint
from opd_dynamics.synthetic import tiny_llama

P = "base_model.model."
STEPS = (1, 2, 4)
FRACTIONS = ("sparsity_bf16", "row_update_ratio", "col_update_ratio", "principal_mask_overlap",
             "principal_mask_overlap_chance", "low_magnitude_overlap", "low_magnitude_overlap_chance")


def _write_adapter(d: Path, tensors: dict, config: dict, *, bin_: bool = False) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    if bin_:
        torch.save(tensors, d / "adapter_model.bin")
    else:
        save_file(tensors, d / "adapter_model.safetensors", metadata={"format": "pt"})
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))


def _write_merged(d: Path, sd: dict, config_text: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(config_text)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """Base + a LoRA run (linear q/v and down_proj with rank/alpha patterns, an embedding, lm_head saved in full)
    + the same run merged into full float32 checkpoints, the way PEFT's merge_and_unload would."""
    root = tmp_path_factory.mktemp("lora")
    model = tiny_llama(hidden=32, layers=2, vocab=64)
    model.save_pretrained(root / "base", safe_serialization=True)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg_text = (root / "base" / "config.json").read_text()
    config = dict(r=4, lora_alpha=8, rank_pattern={"down_proj": 2}, alpha_pattern={"down_proj": 6},
                  base_model_name_or_path=str(root / "base"), modules_to_save=["lm_head"],
                  target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"])
    gen = torch.Generator().manual_seed(0)
    targets = {f"model.layers.{i}.{m}": m for i in range(2) for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")}
    fixed = {}
    for mod in targets:
        out_f, in_f = base[mod + ".weight"].shape
        r = 2 if mod.endswith("down_proj") else 4
        fixed[mod] = (torch.randn(r, in_f, generator=gen), torch.randn(out_f, r, generator=gen))
    emb_a, emb_b = torch.randn(4, 64, generator=gen), torch.randn(32, 4, generator=gen)
    for step in STEPS:
        t = step / max(STEPS)
        tensors, merged = {}, dict(base)
        for mod, (a, b) in fixed.items():
            a_t = a + 0.3 * t * torch.randn(a.shape, generator=gen)
            b_t = 0.02 * t * b
            tensors[f"{P}{mod}.lora_A.weight"], tensors[f"{P}{mod}.lora_B.weight"] = a_t, b_t
            s = (6 / 2) if mod.endswith("down_proj") else (8 / 4)
            merged[mod + ".weight"] = base[mod + ".weight"] + s * (b_t @ a_t)
        ea, eb = emb_a * t + 0.3 * t * torch.randn(emb_a.shape, generator=gen), 0.01 * emb_b
        tensors[f"{P}model.embed_tokens.lora_embedding_A"], tensors[f"{P}model.embed_tokens.lora_embedding_B"] = ea, eb
        merged["model.embed_tokens.weight"] = base["model.embed_tokens.weight"] + 2.0 * (eb @ ea).T
        lm = base["lm_head.weight"] + 0.01 * t * torch.randn(base["lm_head.weight"].shape, generator=gen)
        tensors[f"{P}lm_head.weight"] = merged["lm_head.weight"] = lm
        _write_adapter(root / "lora" / f"checkpoint-{step}", tensors, config)
        _write_merged(root / "merged" / f"checkpoint-{step}", merged, cfg_text)
    return root


def _compare(lora_df, merged_df):
    key = ["module", "step", "ref_step", "metric"]
    m = lora_df.merge(merged_df, on=key, suffixes=("_lora", "_merged"))
    assert len(m) == len(lora_df) > 0
    for metric, g in m.groupby("metric"):
        a, b = g["value_lora"].to_numpy(), g["value_merged"].to_numpy()
        if metric in FRACTIONS:  # bf16 rounding of W₀ + ΔW may differ in an entry or two (1 float32 ulp apart)
            np.testing.assert_allclose(a, b, atol=3e-3, err_msg=metric)
        elif metric.startswith("principal_angle"):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, err_msg=metric)
        else:
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-7, equal_nan=True, err_msg=metric)


@pytest.mark.parametrize("against", ["base", "prev"])
def test_factored_run_matches_merged_checkpoints(llama, against):
    metrics = sorted(available_metrics())
    lora = analyze([llama / "lora"], metrics=metrics, against=against, progress=False, device="cpu")
    merged = analyze([llama / "merged"], base=llama / "base", metrics=metrics, against=against, progress=False,
                     device="cpu")
    assert set(lora.module) == {f"model.layers.{i}.{m}.weight" for i in range(2)
                                for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")} | {
        "model.embed_tokens.weight", "lm_head.weight"}
    _compare(lora, merged)
    er = lora[(lora.metric == "numerical_rank") & (lora.kind == "mlp_down")]
    assert set(er.value) == {2.0}  # rank r (step updates: ≤ 2r, here 2 since B keeps its column space)


def test_spectral_metrics_never_form_the_dense_update(llama, monkeypatch):
    calls = []
    real = linalg.Factored.dense
    monkeypatch.setattr(linalg.Factored, "dense", lambda self, *a, **k: calls.append(self.shape) or real(self, *a, **k))
    before = linalg.COUNTS.copy()
    spectral = ["frobenius", "spectral_norm", "spectral_ratio", "effective_rank", "top1pct_ratio", "stable_rank",
                "hill_alpha", "alignment_to_final", "subspace_locking", "rank1_pca_evr"]
    df = analyze([llama / "lora"], metrics=spectral, select=["kind=attn_*,mlp_*"], progress=False, device="cpu")
    done = linalg.COUNTS - before
    assert calls == []
    n_views = df.groupby(["module", "step"]).ngroups
    assert done["factored"] == n_views and done["gram"] == 0 and done["gram_eigvalsh"] == 0


def _lin(out_f, in_f, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, in_f, generator=g), torch.randn(out_f, r, generator=g)


@pytest.fixture(scope="module")
def small_base(tmp_path_factory):
    d = tmp_path_factory.mktemp("small") / "base"
    d.mkdir()
    save_file({"m.q.weight": torch.randn(6, 5), "m.e.weight": torch.randn(7, 5)}, d / "model.safetensors")
    return d


def _delta(path, base, name, **kw):
    return LoraCheckpoint(path, Checkpoint(base), **kw).get_update(name)


def test_scaling_rslora_and_patterns(tmp_path, small_base):
    a, b = _lin(6, 5, 4)
    t = {f"{P}m.q.lora_A.weight": a, f"{P}m.q.lora_B.weight": b}
    _write_adapter(tmp_path / "plain", t, {"r": 4, "lora_alpha": 8})
    assert _delta(tmp_path / "plain", small_base, "m.q.weight").scale == 2.0
    _write_adapter(tmp_path / "rs", t, {"r": 4, "lora_alpha": 8, "use_rslora": True})
    assert _delta(tmp_path / "rs", small_base, "m.q.weight").scale == 8 / math.sqrt(4)
    _write_adapter(tmp_path / "pat", t, {"r": 2, "lora_alpha": 8, "rank_pattern": {"q": 4}, "alpha_pattern": {"m.q": 12}})
    f = _delta(tmp_path / "pat", small_base, "m.q.weight")
    assert f.scale == 3.0
    np.testing.assert_allclose(f.dense(torch.float64).numpy(), (3.0 * b.double() @ a.double()).numpy(), rtol=1e-12)
    _write_adapter(tmp_path / "bad_r", t, {"r": 2, "lora_alpha": 8})
    with pytest.raises(CheckpointError, match="rank 4 .* r=2"):
        LoraCheckpoint(tmp_path / "bad_r", Checkpoint(small_base))


def test_alpha_zero_asks_for_the_scaling(tmp_path, small_base):
    a, b = _lin(6, 5, 2)
    _write_adapter(tmp_path / "z", {f"{P}m.q.lora_A.weight": a, f"{P}m.q.lora_B.weight": b}, {"r": 2, "lora_alpha": 0})
    with pytest.raises(CheckpointError, match="lora_alpha is 0.*scaling"):
        LoraCheckpoint(tmp_path / "z", Checkpoint(small_base))
    assert _delta(tmp_path / "z", small_base, "m.q.weight", scaling=0.5).scale == 0.5


def test_embedding_and_base_layer(tmp_path, small_base):
    ea, eb = torch.randn(2, 7), torch.randn(5, 2)
    full = torch.randn(7, 5)
    t = {f"{P}m.e.lora_embedding_A": ea, f"{P}m.e.lora_embedding_B": eb}
    _write_adapter(tmp_path / "emb", t, {"r": 2, "lora_alpha": 2})
    np.testing.assert_allclose(_delta(tmp_path / "emb", small_base, "m.e.weight").dense(torch.float64).numpy(),
                               (eb.double() @ ea.double()).T.numpy(), rtol=1e-12)
    _write_adapter(tmp_path / "bl", {**t, f"{P}m.e.base_layer.weight": full}, {"r": 2, "lora_alpha": 2})
    got = _delta(tmp_path / "bl", small_base, "m.e.weight")
    assert isinstance(got, torch.Tensor)  # a full weight: W_t = base_layer + ΔW, not a delta on W₀
    np.testing.assert_allclose(got.numpy(), (full.double() + (eb.double() @ ea.double()).T).numpy(), atol=1e-6)


def test_bin_needs_allow_pickle_and_dora_is_refused(tmp_path, small_base):
    a, b = _lin(6, 5, 2)
    t = {f"{P}m.q.lora_A.weight": a, f"{P}m.q.lora_B.weight": b}
    _write_adapter(tmp_path / "bin", t, {"r": 2, "lora_alpha": 2}, bin_=True)
    with pytest.raises(CheckpointError, match="allow-pickle"):
        LoraCheckpoint(tmp_path / "bin", Checkpoint(small_base))
    assert _delta(tmp_path / "bin", small_base, "m.q.weight", allow_pickle=True).shape == (6, 5)
    _write_adapter(tmp_path / "dora", t, {"r": 2, "lora_alpha": 2, "use_dora": True})
    with pytest.raises(CheckpointError, match="DoRA"):
        LoraCheckpoint(tmp_path / "dora", Checkpoint(small_base))


def test_base_discovery(tmp_path, small_base):
    a, b = _lin(6, 5, 2)
    t = {f"{P}m.q.lora_A.weight": a, f"{P}m.q.lora_B.weight": b}
    for step in (0, 3):
        _write_adapter(tmp_path / "run" / f"checkpoint-{step}", t, {"r": 2, "lora_alpha": 2,
                                                                    "base_model_name_or_path": "Org/not-local"})
    with pytest.raises(OPDError, match="not a local model directory.*--base"):
        open_run(tmp_path / "run")
    run = open_run(tmp_path / "run", base=small_base)
    assert sorted(run.steps) == [3] and run.steps[3].format == "peft-lora"  # the step-0 adapter is dropped


def test_gpt2_fan_in_fan_out_fused_qkv(tmp_path):
    """GPT-2 Conv1D stores (in, out): ΔW_stored = s·(B·A)ᵀ, and c_attn is split into q/k/v row slices."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=24, n_layer=1, n_head=2, vocab_size=50, n_positions=32,
                                       bos_token_id=0, eos_token_id=0))
    model.save_pretrained(tmp_path / "base", safe_serialization=True)
    base = {k: v.detach().clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    cfg_text = (tmp_path / "base" / "config.json").read_text()
    config = {"r": 3, "lora_alpha": 6, "fan_in_fan_out": True, "base_model_name_or_path": str(tmp_path / "base")}
    for step in (1, 2):
        t, merged = {}, dict(base)
        for mod, (out_f, in_f) in {"transformer.h.0.attn.c_attn": (72, 24), "transformer.h.0.mlp.c_fc": (96, 24)}.items():
            a, b = _lin(out_f, in_f, 3, seed=step)
            t[f"{P}{mod}.lora_A.weight"], t[f"{P}{mod}.lora_B.weight"] = a, 0.05 * b
            merged[mod + ".weight"] = base[mod + ".weight"] + 2.0 * (0.05 * b @ a).T
        _write_adapter(tmp_path / "lora" / f"checkpoint-{step}", t, config)
        _write_merged(tmp_path / "merged" / f"checkpoint-{step}", merged, cfg_text)
    metrics = ["frobenius", "spectral_norm", "effective_rank", "subspace_locking", "principal_angles:k=4",
               "sparsity_bf16"]
    lora = analyze([tmp_path / "lora"], metrics=metrics, progress=False, device="cpu")
    merged = analyze([tmp_path / "merged"], base=tmp_path / "base", metrics=metrics, progress=False, device="cpu")
    assert {"attn_q", "attn_k", "attn_v", "mlp_up"} <= set(lora.kind)
    _compare(lora, merged)
    wrong = dict(config, fan_in_fan_out=False)
    (tmp_path / "lora" / "checkpoint-1" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **wrong}))
    with pytest.raises(CheckpointError, match="fan_in_fan_out"):
        open_run(tmp_path / "lora")


def test_lora_scaling_option_overrides_the_config_through_analyze_and_cli(llama, tmp_path):
    from cli_runner import run_cli

    sel = ["name=layers\\.0\\.self_attn\\.q_proj"]
    default = analyze([llama / "lora"], metrics=["frobenius"], select=sel, progress=False, device="cpu")
    forced = analyze([llama / "lora"], metrics=["frobenius"], select=sel, lora_scaling=6.0, progress=False,
                     device="cpu")
    np.testing.assert_allclose(forced.value.to_numpy(), 3.0 * default.value.to_numpy(), rtol=1e-5)  # 8/4 = 2 -> 6
    out = tmp_path / "res"
    r = run_cli("analyze", llama / "lora", "-q", "--lora-scaling", "6", "-m", "frobenius", "-s", sel[0], "-o", out)
    assert r.returncode == 0, r.stderr
    from opd_dynamics.table import load
    np.testing.assert_allclose(load(out).value.to_numpy(), forced.value.to_numpy(), rtol=1e-6)
