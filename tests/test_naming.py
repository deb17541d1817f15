"""Module naming: one test row per architecture family, real transformers models for the common ones."""
from __future__ import annotations

import pytest
import torch

from opd_dynamics.naming import parts, view

ROWS = [  # (family, tensor name, shape, expected [(name suffix, layer, kind)])
    ("llama", "model.layers.7.self_attn.q_proj.weight", (8, 8), [("", 7, "attn_q")]),
    ("llama", "model.layers.7.self_attn.o_proj.weight", (8, 8), [("", 7, "attn_o")]),
    ("llama", "model.layers.0.mlp.gate_proj.weight", (16, 8), [("", 0, "mlp_gate")]),
    ("llama", "model.layers.0.mlp.down_proj.weight", (8, 16), [("", 0, "mlp_down")]),
    ("llama", "model.embed_tokens.weight", (32, 8), [("", None, "embed")]),
    ("llama", "lm_head.weight", (32, 8), [("", None, "lm_head")]),
    ("llama", "model.norm.weight", (8,), [("", None, "norm")]),
    ("llama", "model.layers.2.input_layernorm.weight", (8,), [("", 2, "norm")]),
    ("qwen2", "model.layers.3.self_attn.k_proj.bias", (4,), [("", 3, "bias")]),
    ("qwen3", "model.layers.3.self_attn.q_norm.weight", (4,), [("", 3, "norm")]),
    ("mistral", "model.layers.31.self_attn.v_proj.weight", (4, 8), [("", 31, "attn_v")]),
    ("gemma", "model.layers.1.pre_feedforward_layernorm.weight", (8,), [("", 1, "norm")]),
    ("mixtral", "model.layers.1.block_sparse_moe.experts.3.w2.weight", (8, 16), [("", 1, "mlp_down")]),
    ("gpt2", "transformer.h.5.attn.c_attn.weight", (8, 24),
     [("[q]", 5, "attn_q"), ("[k]", 5, "attn_k"), ("[v]", 5, "attn_v")]),
    ("gpt2", "transformer.h.5.mlp.c_fc.weight", (8, 32), [("", 5, "mlp_up")]),
    ("gpt2", "transformer.wte.weight", (50, 8), [("", None, "embed")]),
    ("gpt2", "transformer.ln_f.weight", (8,), [("", None, "norm")]),
    ("phi3", "model.layers.0.mlp.gate_up_proj.weight", (32, 8), [("[gate]", 0, "mlp_gate"), ("[up]", 0, "mlp_up")]),
    ("other", "model.layers.0.some_adapter.weight", (4, 4), [("", 0, "other")]),
]


@pytest.mark.parametrize("family,name,shape,expected", ROWS, ids=[f"{r[0]}:{r[1]}" for r in ROWS])
def test_name_table(family, name, shape, expected):
    got = [(p.name[len(name):], p.layer, p.kind) for p in parts(name, shape)]
    assert got == expected


def test_phi3_qkv_split_needs_config_and_is_never_guessed():
    cfg = {"hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 2}
    ps = parts("model.layers.0.self_attn.qkv_proj.weight", (16, 8), cfg)  # q 8 + k 4 + v 4
    assert [(p.kind, p.rows) for p in ps] == [("attn_q", (0, 8)), ("attn_k", (8, 12)), ("attn_v", (12, 16))]
    assert [p.kind for p in parts("model.layers.0.self_attn.qkv_proj.weight", (16, 8))] == ["other"]
    assert [p.kind for p in parts("model.layers.0.self_attn.qkv_proj.weight", (15, 8), cfg)] == ["other"]


def test_gpt2_conv1d_is_transposed_to_linear_orientation():
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, n_positions=16))
    sd = m.state_dict()
    w = sd["transformer.h.0.attn.c_attn.weight"]  # Conv1D: (in, 3*out)
    q, k, v = parts("transformer.h.0.attn.c_attn.weight", tuple(w.shape))
    x = torch.randn(16)
    # Conv1D computes x @ W; our (out, in) view must compute the same as a Linear: W_view @ x
    assert torch.allclose(view(w, q) @ x, (x @ w)[:16], atol=1e-6)
    assert torch.allclose(view(w, v) @ x, (x @ w)[32:], atol=1e-6)
    kinds = {p.kind for n, t in sd.items() for p in parts(n, tuple(t.shape))}
    assert {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down", "embed", "norm", "bias"} <= kinds


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "gemma"])
def test_every_tensor_of_real_models_gets_a_kind(family):
    import transformers as tf

    cfg_cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config,
               "mistral": tf.MistralConfig, "gemma": tf.GemmaConfig}[family]
    cfg = cfg_cls(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8, max_position_embeddings=16)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    kinds = {n: parts(n, tuple(t.shape))[0].kind for n, t in model.state_dict().items()}
    assert "other" not in kinds.values(), [n for n, k in kinds.items() if k == "other"]
    assert {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down", "embed", "norm"} <= set(kinds.values())


def test_one_definition_of_attention_mlp_matrix():
    from opd_dynamics import table
    from opd_dynamics.naming import BODY_KINDS, FUSED_BODY_KINDS, KINDS, NAME_TABLE, is_body

    assert table.BODY_KINDS is BODY_KINDS and table.KINDS is KINDS
    for _fam, _rx, kind, _layout in NAME_TABLE:  # tensor kinds: the four earlier definitions agreed on this prefix rule
        assert is_body(kind) == kind.startswith(("attn_", "mlp_")), kind
        assert kind in KINDS or kind in FUSED_BODY_KINDS, kind
    # a fused tensor's parts are body modules, whose kinds the long table knows
    for name, shape, cfg in [("transformer.h.0.attn.c_attn.weight", (4, 12), None),
                             ("model.layers.0.mlp.gate_up_proj.weight", (8, 4), None),
                             ("model.layers.0.mlp.experts.gate_up_proj", (2, 8, 4), {"hidden_size": 4})]:
        assert all(p.kind in BODY_KINDS for p in parts(name, shape, cfg)), name
    assert not any(is_body(k) for k in ("embed", "lm_head", "norm", "bias", "router", "other"))
