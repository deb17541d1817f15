"""Megatron-core torch_dist checkpoints written by megatron-core itself (TP = 2, 2 gloo ranks on CPU)."""
from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from opd_dynamics.errors import CheckpointError
from opd_dynamics.io.formats import megatron

if importlib.util.find_spec("megatron") is None or importlib.util.find_spec("megatron.core") is None:
    # not imported here: importing megatron-core takes seconds, paid at collection even by `-m "not slow"`
    pytest.skip("needs the [megatron] extra (megatron-core)", allow_module_level=True)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def megatron_run(tmp_path_factory):
    """{'hf': safetensors run, 'base': base dir, 'megatron': iter_N/ run, 'config': HF config} — one trajectory."""
    import megatron_writer
    from opd_dynamics.synthetic import make_synthetic_runs

    root = tmp_path_factory.mktemp("megatron")
    hf = make_synthetic_runs(root / "hf", steps=(1, 2), kinds=("opd",), layers=2, hidden=32, vocab=64)
    run = megatron_writer.write(hf["opd"], root / "megatron")
    return {"hf": hf["opd"], "base": hf["base"], "megatron": run,
            "config": json.loads((hf["base"] / "config.json").read_text())}


def test_layout_is_what_megatron_writes(megatron_run):
    run = megatron_run["megatron"]
    assert (run / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    it = run / "iter_0000002"
    assert json.loads((it / "metadata.json").read_text())["sharded_backend"] == "torch_dist"
    assert megatron.detect(it) == it and (it / "common.pt").exists()
    qkv = megatron.open(it, base_config=megatron_run["config"]).index.tensors()[
        "model.decoder.layers.self_attention.linear_qkv.weight"]
    assert tuple(qkv.size) == (2, 64, 32) and len(qkv.chunks) == 4  # 2 layers × 2 tensor-parallel ranks


def test_reads_hf_names_and_values_exactly(megatron_run):
    for step in (1, 2):
        expected = load_file(megatron_run["hf"] / f"checkpoint-{step}" / "model.safetensors")
        r = megatron.open(megatron_run["megatron"] / f"iter_{step:07d}", base_config=megatron_run["config"])
        assert sorted(r.keys()) == sorted(expected), "names, _extra_state skipped, norms mapped"
        for name, t in expected.items():
            assert r.shape(name) == tuple(t.shape) and r.dtype(name) == torch.float32, name
            assert torch.equal(r.get_tensor(name), t), name
        assert r.reads == len(expected) and r.config == megatron_run["config"]


def test_logits_match_the_megatron_model(megatron_run):
    """The HF model built from the reader's tensors computes Megatron's own logits (fp32, TP = 2)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    saved = torch.load(megatron_run["megatron"] / "logits.pt", weights_only=True)
    r = megatron.open(megatron_run["megatron"] / f"iter_{saved['step']:07d}", base_config=megatron_run["config"])
    model = LlamaForCausalLM(LlamaConfig(**megatron_run["config"])).eval()

    def logits(sd):
        model.load_state_dict(sd)
        with torch.no_grad():
            return model(saved["tokens"]).logits.double()

    sd = {k: r.get_tensor(k) for k in r.keys()}
    ref = saved["logits"].double()
    assert (logits(sd) - ref).abs().max() < 1e-4 * ref.abs().max()
    # the test can tell a wrong split: q/k/v cut as three contiguous blocks instead of per query group
    qkv = r.index.read("model.decoder.layers.self_attention.linear_qkv.weight", (0,))
    sd["model.layers.0.self_attn.q_proj.weight"], sd["model.layers.0.self_attn.k_proj.weight"], \
        sd["model.layers.0.self_attn.v_proj.weight"] = qkv.split([32, 16, 16])
    assert (logits(sd) - ref).abs().max() > 1e-2 * ref.abs().max()


def test_needs_the_base_config(megatron_run):
    with pytest.raises(CheckpointError, match="need the model config.*pass --base"):
        megatron.open(megatron_run["megatron"] / "iter_0000001")
    bad = {**megatron_run["config"], "num_key_value_heads": 4}
    r = megatron.open(megatron_run["megatron"] / "iter_0000001", base_config=bad)
    with pytest.raises(CheckpointError, match="linear_qkv.weight' has 64 rows, config says 4 query groups"):
        r.get_tensor("model.layers.0.self_attn.k_proj.weight")


def test_missing_rank_file_is_named(megatron_run, tmp_path):
    d = shutil.copytree(megatron_run["megatron"] / "iter_0000001", tmp_path / "iter_0000001")
    (d / "__1_0.distcp").unlink()
    r = megatron.open(d, base_config=megatron_run["config"])
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp: missing rank file"):
        for k in r.keys():
            r.get_tensor(k)


def test_megatron_classes_are_stubbed_not_imported(tmp_path):
    """A .metadata naming megatron classes loads as inert stubs; other classes are refused."""
    import pickle
    import types

    from opd_dynamics.io.formats.dcp_index import read_metadata

    fake = types.ModuleType("megatron.fake_for_test")

    class Planner:  # pickled by reference as megatron.fake_for_test.Planner
        pass

    Planner.__module__, Planner.__qualname__ = "megatron.fake_for_test", "Planner"
    fake.Planner = Planner
    import sys

    sys.modules["megatron.fake_for_test"] = fake
    try:
        from torch.distributed.checkpoint.metadata import Metadata

        md = Metadata(state_dict_metadata={}, planner_data=Planner(), storage_data={})
        (tmp_path / ".metadata").write_bytes(pickle.dumps(md))
    finally:
        del sys.modules["megatron.fake_for_test"]
    got = read_metadata(tmp_path, stub_modules=("megatron.",))
    assert type(got.planner_data).__name__ == "Planner" and got.storage_data == {}
    with pytest.raises(CheckpointError, match="unpickling needs megatron.fake_for_test.Planner"):
        read_metadata(tmp_path)


def test_analyze_tables_equal_safetensors(megatron_run, tmp_path):
    """The same trajectory as HF safetensors and as Megatron torch_dist (TP = 2): one table, no flag needed."""
    from format_tables import assert_same_tables

    assert_same_tables(megatron_run["hf"], megatron_run["base"], [megatron_run["megatron"]], tmp_path / "res")


def test_moe_experts_and_router_under_qwen3_moe_names(tmp_path_factory):
    """Megatron MoE (SequentialMLP): stacked [L, E, …] experts become one HF tensor per expert, router = mlp.gate."""
    import megatron_writer

    d = megatron_writer.write_moe(tmp_path_factory.mktemp("megatron-moe"))
    cfg = {"num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 32, "head_dim": 8, "vocab_size": 64}
    r = megatron.open(d / "iter_0000001", base_config=cfg)
    own = torch.load(d / "model_sd.pt", weights_only=True)  # the model's per-expert parameters, unstacked
    assert r.index.tensors()["model.decoder.layers.mlp.experts.experts.linear_fc1.weight"].size == (2, 2, 48, 32)
    for i in range(2):
        p, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        assert torch.equal(r.get_tensor(p + "mlp.gate.weight"), own[m + "mlp.router.weight"])
        assert torch.equal(r.get_tensor(p + "post_attention_layernorm.weight"), own[m + "pre_mlp_layernorm.weight"])
        for e in range(2):
            fc1 = own[m + f"mlp.experts.local_experts.{e}.linear_fc1.weight"]
            assert torch.equal(r.get_tensor(p + f"mlp.experts.{e}.gate_proj.weight"), fc1[:24])
            assert torch.equal(r.get_tensor(p + f"mlp.experts.{e}.up_proj.weight"), fc1[24:])
            assert torch.equal(r.get_tensor(p + f"mlp.experts.{e}.down_proj.weight"),
                               own[m + f"mlp.experts.local_experts.{e}.linear_fc2.weight"])
    assert not any("mlp.up_proj" in k or "_extra_state" in k for k in r.keys())
