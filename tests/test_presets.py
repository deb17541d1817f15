"""The ``authors`` preset against the paper-text default, one test per row of docs/fidelity.md.

Each test plants an input where the two conventions give different, hand-computed numbers, and checks both.
"""
from __future__ import annotations

import pytest
import torch

from opd_dynamics.effopd import EffOPD, extrapolated_names
from opd_dynamics.errors import OPDError
from opd_dynamics.presets import PRESETS, check, parts, resolve, settings


def test_every_part_has_both_presets_and_unknown_names_are_one_line_errors():
    assert PRESETS == ("paper", "authors")
    for part in parts():
        assert settings(part, "paper") != settings(part, "authors"), part
    assert check(None) == "paper"
    with pytest.raises(OPDError, match="preset 'author' unknown"):
        check("author")


# --- EffOPD: acceptance rule ------------------------------------------------------------------------------------

def _tiny(seed=0):
    from opd_dynamics.synthetic import tiny_llama

    return tiny_llama(seed=seed)


@pytest.mark.parametrize("preset,accepted", [("paper", 5), ("authors", 0)])
def test_effopd_rule_ties_are_accepted_by_the_paper_and_rejected_by_the_authors(preset, accepted):
    """A flat score (every candidate ties W_t): ≥ walks to the last candidate k = 5, > keeps plain OPD."""
    model = _tiny()
    hook = EffOPD(lambda m: 0.5, model, preset=preset)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    r = hook.after_step(model, 1)
    assert (r.rule, r.accepted_k) == ({"paper": ">=", "authors": ">"}[preset], accepted)
    assert EffOPD(lambda m: 0.5, preset="authors", rule=">=").rule == ">="  # an explicit setting wins


# --- EffOPD: which parameters are extrapolated --------------------------------------------------------------------

def _names(config_cls, **kw):
    from transformers import AutoModelForCausalLM

    cfg = config_cls(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, **kw)
    with torch.device("meta"):
        return [n for n, _ in AutoModelForCausalLM.from_config(cfg).named_parameters()]


def test_effopd_params_authors_name_match_takes_biases_qk_norms_post_attention_norm_and_router():
    from transformers import Qwen2Config, Qwen3Config, Qwen3MoeConfig

    qwen2 = _names(Qwen2Config)
    qwen3 = _names(Qwen3Config, head_dim=8)
    moe = _names(Qwen3MoeConfig, head_dim=8, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8)
    short = lambda ns: sorted({n.split("layers.0.")[-1] for n in ns})  # noqa: E731
    # paper (default): the attention / MLP weight matrices only
    assert short(extrapolated_names(qwen2)) == ["mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                                "self_attn.k_proj.weight", "self_attn.o_proj.weight",
                                                "self_attn.q_proj.weight", "self_attn.v_proj.weight"]
    authors2 = set(short(extrapolated_names(qwen2, params="authors")))
    assert authors2 - set(short(extrapolated_names(qwen2))) == {
        "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "post_attention_layernorm.weight"}
    authors3 = set(short(extrapolated_names(qwen3, params="authors")))
    assert {"self_attn.q_norm.weight", "self_attn.k_norm.weight"} <= authors3
    assert "self_attn.q_norm.weight" not in short(extrapolated_names(qwen3))
    assert "mlp.gate.weight" in short(extrapolated_names(moe, params="authors"))
    assert "mlp.gate.weight" not in short(extrapolated_names(moe))
    for ns in (qwen2, qwen3, moe):  # never: embeddings, lm_head, the final norm, input_layernorm
        assert not any(k in n for n in extrapolated_names(ns, params="authors")
                       for k in ("embed", "lm_head", "input_layernorm", "model.norm"))
    with pytest.raises(OPDError, match="params='all' not understood"):
        extrapolated_names(qwen2, params="all")


def test_effopd_preset_moves_a_bias_only_under_authors():
    """Online search with a score that rewards moving along Δ: under ``authors`` the bias moves by 2kΔ, else not."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    bias = "model.layers.0.self_attn.q_proj.bias"
    moved = {}
    for preset in ("paper", "authors"):
        model = AutoModelForCausalLM.from_config(cfg).float()
        start = dict(model.named_parameters())[bias].detach().clone()
        weight = "model.layers.0.self_attn.q_proj.weight"
        w0 = dict(model.named_parameters())[weight].detach().clone()
        hook = EffOPD(lambda m: float(dict(m.named_parameters())[weight].sum() - w0.sum()), model, preset=preset)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-2)
        r = hook.after_step(model, 1)
        assert r.accepted_k == 5
        moved[preset] = float((dict(model.named_parameters())[bias].detach() - start).mean())
    assert moved["paper"] == pytest.approx(1e-2, abs=1e-6)            # W_1 = W_0 + Δ: the bias is not extrapolated
    assert moved["authors"] == pytest.approx(11 * 1e-2, abs=1e-5)     # W_1 + 10Δ


def test_resolve_fills_only_what_is_not_given():
    assert resolve("effopd", "authors") == {"rule": ">", "params": "authors"}
    assert resolve("effopd", "authors", params="weights") == {"rule": ">", "params": "weights"}


def test_every_row_of_docs_fidelity_names_a_test_that_exists():
    """docs/fidelity.md: each table row names at least one test, and every named test is defined."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    rows = [line for line in (root / "docs" / "fidelity.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| item", "|---"))]
    assert len(rows) >= 2
    defined: dict[str, set[str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`|`::(\w+)`", cells[-1])
        assert named, row
        current = None
        for path, name, more in named:
            current = path or current
            if current not in defined:
                tree = ast.parse((root / current).read_text())
                defined[current] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert (name or more) in defined[current], (current, name or more)
