"""Mixture-of-experts: one part per expert (per-expert matrices and fused 3-D tensors), the router its own kind."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

import opd_dynamics as od
from opd_dynamics.naming import parts
from opd_dynamics.table import EXPERT, KINDS, load, save

E, HIDDEN, MOE_I = 4, 32, 16


def _qwen3_moe(seed: int = 0):
    from transformers import AutoModelForCausalLM, Qwen3MoeConfig

    torch.manual_seed(seed)
    cfg = Qwen3MoeConfig(vocab_size=64, hidden_size=HIDDEN, intermediate_size=64, moe_intermediate_size=MOE_I,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_experts=E, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[],
                         tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


@pytest.fixture(scope="session")
def moe_runs(tmp_path_factory):
    """The same Qwen3-MoE trajectory saved twice: by ``save_pretrained`` (per-expert names) and as the raw state
    dict an FSDP actor holds (fused ``experts.gate_up_proj`` [E, 2I, H] / ``down_proj`` [E, H, I])."""
    root = tmp_path_factory.mktemp("moe")
    model = _qwen3_moe()
    g = torch.Generator().manual_seed(1)
    states = {0: {k: v.clone() for k, v in model.state_dict().items()}}
    for step in (1, 2):
        sd = {k: v.clone() for k, v in states[step - 1].items()}
        for k, v in sd.items():  # a rank-1 update of every matrix, a different one per expert
            if v.ndim >= 2:
                u = torch.randn(*v.shape[:-1], 1, generator=g)
                w = torch.randn(*v.shape[:-2], 1, v.shape[-1], generator=g)
                v += 0.01 * u @ w
        states[step] = sd
    cfg = model.config.to_dict()
    for step, sd in states.items():
        model.load_state_dict(sd)
        model.save_pretrained(root / "hf" / f"checkpoint-{step}")
        d = root / "fused" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps(cfg))
    return {"hf": root / "hf", "fused": root / "fused", "states": states}


def _spectral(df, run=None):
    return df[(df["metric"] == "spectral_norm") & df[EXPERT].notna()]


@pytest.mark.parametrize("layout", ["hf", "fused"])
def test_every_expert_gets_spectral_metrics(moe_runs, layout):
    df = od.analyze([moe_runs[layout]], names=["moe"], progress=False, device="cpu")
    sp = _spectral(df)
    got = sp.groupby(["step", "layer", "kind"])[EXPERT].apply(lambda s: sorted(s.astype(int)))
    for (step, layer, kind), experts in got.items():
        assert experts == list(range(E)), (step, layer, kind)
    assert set(sp["kind"]) == {"mlp_gate", "mlp_up", "mlp_down"} and set(sp["step"]) == {1, 2}
    assert len(sp) == 2 * 2 * E * 3  # steps x layers x experts x (gate, up, down)
    router = df[(df["kind"] == "router") & (df["metric"] == "spectral_norm")]
    assert len(router) == 2 * 2 and router[EXPERT].isna().all()
    assert df[df["kind"].isin(["attn_q", "embed"])][EXPERT].isna().all()
    # float64 oracle: the spectral norm of expert e's gate update at step 2
    states = moe_runs["states"]
    name = "model.layers.1.mlp.experts.gate_up_proj"
    for e in range(E):
        delta = (states[2][name][e, :MOE_I] - states[0][name][e, :MOE_I]).double()
        want = torch.linalg.matrix_norm(delta, ord=2).item()
        row = sp[(sp["step"] == 2) & (sp["layer"] == 1) & (sp["kind"] == "mlp_gate") & (sp[EXPERT] == e)]
        assert row["value"].item() == pytest.approx(want, rel=1e-5)


def test_fused_and_per_expert_layouts_give_the_same_numbers(moe_runs):
    kw = dict(names=["moe"], progress=False, device="cpu")
    a = od.analyze([moe_runs["hf"]], **kw)
    b = od.analyze([moe_runs["fused"]], **kw)
    key = ["step", "layer", EXPERT, "kind", "metric"]
    # alignment_to_final compares top-20 subspaces; a 32x16 expert's update has rank <= 16, so directions past
    # its rank are round-off and differ between any two memory layouts: leave that one metric out
    ma, mb = ((d[d[EXPERT].notna() & (d["metric"] != "alignment_to_final")]).set_index(key)["value"].sort_index()
              for d in (a, b))
    assert ma.index.equals(mb.index) and len(ma) > 0
    torch.testing.assert_close(torch.tensor(mb.to_numpy()), torch.tensor(ma.to_numpy()), rtol=1e-5, atol=1e-9)


def test_naming_of_expert_tensors():
    mix = parts("model.layers.2.block_sparse_moe.experts.5.w1.weight", (16, 8))
    assert [(p.kind, p.expert, p.layer) for p in mix] == [("mlp_gate", 5, 2)]
    assert parts("model.layers.0.block_sparse_moe.gate.weight", (8, 32))[0].kind == "router"
    assert parts("model.layers.0.mlp.gate.weight", (8, 32))[0].kind == "router"
    assert parts("model.layers.0.mlp.gate_proj.weight", (8, 32))[0].kind == "mlp_gate"  # dense MLP untouched
    down = parts("model.layers.0.mlp.experts.down_proj", (3, 32, 16), {"hidden_size": 32})
    assert [(p.kind, p.expert, p.index, p.transpose) for p in down] == [("mlp_down", e, e, False) for e in range(3)]
    llama4 = parts("model.layers.0.feed_forward.experts.gate_up_proj", (2, 32, 24), {"hidden_size": 32})
    assert [(p.kind, p.rows, p.transpose) for p in llama4[:2]] == [("mlp_gate", (0, 12), True), ("mlp_up", (12, 24), True)]
    unknown = parts("model.layers.0.mlp.experts.gate_up_proj", (2, 32, 24))  # no config: never guess the split
    assert [(p.kind, p.expert) for p in unknown] == [("other", 0), ("other", 1)]
    assert "router" in KINDS


def test_tables_without_expert_column_still_load(tmp_path):
    old = pd.DataFrame({"run": ["r"], "step": [1], "ref_step": [0], "module": ["m"], "layer": [0], "kind": ["mlp_up"],
                        "metric": ["frobenius"], "value": [1.0]})
    old.to_parquet(tmp_path / "metrics.parquet", index=False)
    df = load(tmp_path)
    assert df[EXPERT].isna().all() and str(df[EXPERT].dtype) == "Int64"
    save(df, tmp_path / "again", {"tool": "test"})
    assert load(tmp_path / "again")[EXPERT].isna().all()

