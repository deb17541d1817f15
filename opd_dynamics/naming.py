"""Tensor name -> (layer, kind), and how fused tensors split: a data table, one row per naming family.

Every module is reported in the ``nn.Linear`` orientation ``(out_features, in_features)``: GPT-2's
``Conv1D`` weights are stored ``(in, out)`` and are transposed on read, so "left singular vectors" mean the
same thing for every family. Fused tensors are split only when the split is known from the architecture
or from ``config.json``; otherwise they are reported whole as kind ``other`` — never guessed.

>>> [(p.name, p.layer, p.kind) for p in parts("model.layers.3.self_attn.q_proj.weight", (8, 8))]
[('model.layers.3.self_attn.q_proj.weight', 3, 'attn_q')]
>>> [(p.name, p.kind, p.rows) for p in parts("transformer.h.0.attn.c_attn.weight", (4, 12))]
[('transformer.h.0.attn.c_attn.weight[q]', 'attn_q', (0, 4)), ('transformer.h.0.attn.c_attn.weight[k]', 'attn_k', (4, 8)), ('transformer.h.0.attn.c_attn.weight[v]', 'attn_v', (8, 12))]

Mixture-of-experts: a per-expert matrix (Qwen3-MoE ``mlp.experts.E.gate_proj``, Mixtral
``block_sparse_moe.experts.E.w1``) carries its expert index; a fused 3-D expert tensor (transformers' in-memory
``mlp.experts.gate_up_proj`` [E, 2I, H] and ``down_proj`` [E, H, I], as FSDP state dicts hold them) becomes one
part per expert (``index`` = its slab) — never one 3-D "matrix"; the router (``mlp.gate``) is kind ``router``.

>>> [(p.name, p.expert, p.kind, p.index, p.rows) for p in parts("model.layers.0.mlp.experts.gate_up_proj", (2, 8, 4), {"hidden_size": 4})][:2]
[('model.layers.0.mlp.experts.gate_up_proj[0][gate]', 0, 'mlp_gate', 0, (0, 4)), ('model.layers.0.mlp.experts.gate_up_proj[0][up]', 0, 'mlp_up', 0, (4, 8))]
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Mapping

from .kinds import ATTN_KINDS, BODY_KINDS, FUSED_BODY_KINDS, KINDS, MLP_KINDS, is_body  # noqa: F401 (re-exported)

# (family, regex on the tensor name, kind, layout). First match wins, so specific rows come first.
# layout: "linear" (out, in) | "conv1d" (in, out; transposed on read) | "fused_qkv" | "fused_qkv_conv1d"
#         | "fused_gate_up" | "vector" (1-D, never a matrix metric)
NAME_TABLE: tuple[tuple[str, str, str, str], ...] = (
    # biases of any family (Qwen2 q/k/v bias, GPT-2 everything)
    ("any", r"\.bias$", "bias", "vector"),
    # mixture-of-experts routers (Qwen2/3-MoE, DeepSeek, Mixtral) and fused 3-D expert tensors [E, ...]
    ("moe", r"\.mlp\.(gate|shared_expert_gate)\.weight$", "router", "linear"),
    ("mixtral", r"\.block_sparse_moe\.gate\.weight$", "router", "linear"),
    ("moe", r"\.experts\.gate_up_proj$", "mlp_gate_up", "experts_gate_up"),
    ("moe", r"\.experts\.down_proj$", "mlp_down", "experts"),
    ("moe", r"\.experts\.gate_proj$", "mlp_gate", "experts"),
    ("moe", r"\.experts\.up_proj$", "mlp_up", "experts"),
    # Llama / Qwen2 / Qwen3 / Mistral / Gemma (and Mixtral/Qwen-MoE experts)
    ("llama", r"\.self_attn\.q_proj\.weight$", "attn_q", "linear"),
    ("llama", r"\.self_attn\.k_proj\.weight$", "attn_k", "linear"),
    ("llama", r"\.self_attn\.v_proj\.weight$", "attn_v", "linear"),
    ("llama", r"\.self_attn\.o_proj\.weight$", "attn_o", "linear"),
    ("llama", r"\.self_attn\.(q|k)_norm\.weight$", "norm", "vector"),
    ("llama", r"\.mlp\.(experts\.\d+\.)?gate_proj\.weight$", "mlp_gate", "linear"),
    ("llama", r"\.mlp\.(experts\.\d+\.)?up_proj\.weight$", "mlp_up", "linear"),
    ("llama", r"\.mlp\.(experts\.\d+\.)?down_proj\.weight$", "mlp_down", "linear"),
    ("mixtral", r"\.block_sparse_moe\.experts\.\d+\.w1\.weight$", "mlp_gate", "linear"),
    ("mixtral", r"\.block_sparse_moe\.experts\.\d+\.w3\.weight$", "mlp_up", "linear"),
    ("mixtral", r"\.block_sparse_moe\.experts\.\d+\.w2\.weight$", "mlp_down", "linear"),
    ("llama", r"(^|\.)embed_tokens\.weight$", "embed", "linear"),
    ("llama", r"(^|\.)lm_head\.weight$", "lm_head", "linear"),
    ("llama", r"(norm|layernorm)\.weight$", "norm", "vector"),
    # Phi-3 style fused projections (split needs config for qkv; gate_up is two equal halves)
    ("phi3", r"\.self_attn\.qkv_proj\.weight$", "attn_qkv", "fused_qkv"),
    ("phi3", r"\.mlp\.gate_up_proj\.weight$", "mlp_gate_up", "fused_gate_up"),
    # GPT-2
    ("gpt2", r"\.attn\.c_attn\.weight$", "attn_qkv", "fused_qkv_conv1d"),
    ("gpt2", r"\.attn\.c_proj\.weight$", "attn_o", "conv1d"),
    ("gpt2", r"\.mlp\.c_fc\.weight$", "mlp_up", "conv1d"),
    ("gpt2", r"\.mlp\.c_proj\.weight$", "mlp_down", "conv1d"),
    ("gpt2", r"(^|\.)(wte|wpe)\.weight$", "embed", "linear"),
    ("gpt2", r"(^|\.)ln_(1|2|f)\.weight$", "norm", "vector"),
)
_COMPILED = tuple((fam, re.compile(rx), kind, layout) for fam, rx, kind, layout in NAME_TABLE)
_LAYER = re.compile(r"\.(?:layers|h|blocks|block|decoder\.layers)\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")


@dataclass(frozen=True)
class Part:
    """One analysed module: a whole tensor or a known slice of a fused one.

    ``rows`` is the row range in the (out, in) orientation, ``None`` for the whole tensor;
    ``transpose`` says the stored tensor is (in, out) and must be transposed first; ``index`` picks one slab of
    a stacked tensor first (an expert of a fused [E, …] tensor); ``expert`` is the expert index (None: dense).
    """

    name: str
    tensor: str
    layer: int | None
    kind: str
    rows: tuple[int, int] | None = None
    transpose: bool = False
    expert: int | None = None
    index: int | None = None


def layer_of(name: str) -> int | None:
    """0-based transformer block index parsed from a tensor name, or None (embeddings, head, final norm)."""
    m = _LAYER.search("." + name)
    return int(m.group(1)) if m else None


def expert_of(name: str) -> int | None:
    """Expert index parsed from a per-expert tensor name (``...experts.7.w1.weight`` -> 7), else None."""
    m = _EXPERT.search("." + name)
    return int(m.group(1)) if m else None


def classify(name: str) -> tuple[str, str]:
    """(kind-or-fused-kind, layout) of a tensor name; ``("other", "linear")`` when no row matches."""
    for _fam, rx, kind, layout in _COMPILED:
        if rx.search(name):
            return kind, layout
    return "other", "linear"


def _qkv_sizes(config: Mapping[str, Any] | None) -> tuple[int, int, int] | None:
    if not config:
        return None
    heads = config.get("num_attention_heads")
    hidden = config.get("hidden_size")
    if not heads or not hidden:
        return None
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    return heads * head_dim, kv * head_dim, kv * head_dim


def parts(name: str, shape: tuple[int, ...], config: Mapping[str, Any] | None = None) -> list[Part]:
    """Split a stored tensor into the modules we report, in (out, in) orientation.

    Non-matrix tensors come back as one part with their kind (norm, bias, other); metrics that need a
    matrix skip them.
    """
    kind, layout = classify(name)
    layer = layer_of(name)
    ndim = len(shape)
    if layout in ("experts", "experts_gate_up"):
        if ndim == 3:
            return _expert_parts(name, shape, kind, layout, layer, config)
        return [Part(name, name, layer, "other")]
    expert = expert_of(name)  # per-expert tensors: the usual parts, tagged with their expert
    return [p if expert is None else replace(p, expert=expert) for p in _parts(name, shape, kind, layout, layer, config)]


def _parts(name, shape, kind, layout, layer, config) -> list[Part]:
    ndim = len(shape)
    if kind == "other" or ndim != 2:
        if kind in ("attn_qkv", "mlp_gate_up"):
            kind = "other"
        return [Part(name, name, layer, kind)]
    transpose = layout in ("conv1d", "fused_qkv_conv1d")
    out_dim = shape[1] if transpose else shape[0]
    if layout == "fused_qkv_conv1d":  # GPT-2: q, k, v of equal width, always
        sizes = (out_dim // 3,) * 3 if out_dim % 3 == 0 else None
    elif layout == "fused_qkv":
        sizes = _qkv_sizes(config)
        if sizes is not None and sum(sizes) != out_dim:
            sizes = None
    elif layout == "fused_gate_up":
        sizes = (out_dim // 2,) * 2 if out_dim % 2 == 0 else None
    else:
        return [Part(name, name, layer, kind, None, transpose)]
    if sizes is None:  # unknown split: report whole, never guess
        return [Part(name, name, layer, "other", None, transpose)]
    labels = ("q", "k", "v") if kind == "attn_qkv" else ("gate", "up")
    kinds = ("attn_q", "attn_k", "attn_v") if kind == "attn_qkv" else ("mlp_gate", "mlp_up")
    out, start = [], 0
    for label, k, size in zip(labels, kinds, sizes):
        out.append(Part(f"{name}[{label}]", name, layer, k, (start, start + size), transpose))
        start += size
    return out


def _expert_parts(name, shape, kind, layout, layer, config) -> list[Part]:
    """One part per expert of a fused [E, a, b] tensor; orientation from ``hidden_size``, never guessed."""
    n_exp, a, b = shape
    hidden = (config or {}).get("hidden_size")
    interleaved = (config or {}).get("model_type") == "gpt_oss"  # gate/up interleaved along the last axis
    # the hidden axis is the input of gate/up and the output of down: it says which way round the slab is stored
    linear, flipped = (b, a) if layout == "experts_gate_up" or kind != "mlp_down" else (a, b)
    llama4 = str((config or {}).get("model_type", "")).startswith("llama4")  # stores [E, in, out]
    if hidden and linear == hidden and not interleaved and not (llama4 and flipped == hidden):
        transpose, out_dim = False, a            # [E, out, in] (transformers' Qwen3-MoE, Mixtral)
    elif hidden and flipped == hidden and not interleaved:
        transpose, out_dim = True, b             # [E, in, out] (Llama 4)
    else:                                        # unknown or ambiguous orientation: each expert whole, kind other
        return [Part(f"{name}[{e}]", name, layer, "other", None, False, e, e) for e in range(n_exp)]
    out = []
    for e in range(n_exp):
        if layout == "experts_gate_up" and out_dim % 2 == 0:
            half = out_dim // 2
            out += [Part(f"{name}[{e}][gate]", name, layer, "mlp_gate", (0, half), transpose, e, e),
                    Part(f"{name}[{e}][up]", name, layer, "mlp_up", (half, out_dim), transpose, e, e)]
        elif layout == "experts_gate_up":
            out.append(Part(f"{name}[{e}]", name, layer, "other", None, transpose, e, e))
        else:
            out.append(Part(f"{name}[{e}]", name, layer, kind, None, transpose, e, e))
    return out


def view(tensor, part: Part):
    """The (out, in) matrix of ``part`` inside a loaded ``tensor`` (a view, no copy where possible)."""
    tensor = tensor if part.index is None else tensor[part.index]
    t = tensor.T if part.transpose else tensor
    return t if part.rows is None else t[part.rows[0]:part.rows[1]]
