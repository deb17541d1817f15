"""Tiny Llama / Qwen2 causal LMs built from ``transformers`` configs, for the reference runs.

The models are ordinary Hugging Face models (``AutoModelForCausalLM.from_config``), so their
checkpoints carry real tensor names (``model.layers.3.mlp.down_proj.weight``) and reload with
``AutoModelForCausalLM.from_pretrained``. Only the sizes are toy: hidden 64–128, a few layers.

>>> from opd_dynamics.lab.tokenizer import char_tokenizer
>>> m = build_model(ModelSpec(hidden=32, layers=2, heads=2, intermediate=64), char_tokenizer(), seed=0)
>>> m.config.model_type, m.config.num_hidden_layers, m.config.vocab_size
('llama', 2, 100)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase, Qwen2Config

CONFIGS = {"qwen2": Qwen2Config, "llama": LlamaConfig}
# Eager attention: on the CPU at these sizes, SDPA with a padding mask decoded ~5x slower (measured
# on 200 left-padded prompts, 24 new tokens); it changes speed only, not what is computed.
ATTENTION = "eager"


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of a tiny model. ``arch`` is ``llama`` (default) or ``qwen2`` (q/k/v biases).

    Llama by default because transformers 5 pins ``AutoTokenizer`` to ``Qwen2Tokenizer`` for any
    directory whose config says qwen2, which silently replaces our character tokenizer (see
    :mod:`.tokenizer`); with llama, ``AutoTokenizer`` and :func:`~.tokenizer.load_tokenizer` agree.
    """

    hidden: int = 64
    layers: int = 8
    heads: int = 4
    kv_heads: int | None = None  # None: as many as ``heads`` (no grouped-query attention)
    intermediate: int = 256
    arch: str = "llama"
    max_positions: int = 128
    tie_embeddings: bool = True  # as in small Qwen models; the tied lm_head is then absent from the file


def build_model(spec: ModelSpec, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A freshly initialised fp32 model for ``tokenizer``'s vocabulary; same seed, same weights."""
    if spec.arch not in CONFIGS:
        raise ValueError(f"unknown arch {spec.arch!r}; expected one of {sorted(CONFIGS)}")
    config = CONFIGS[spec.arch](
        vocab_size=len(tokenizer), hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.kv_heads or spec.heads,
        intermediate_size=spec.intermediate, max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_embeddings, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    # fork_rng: initialisation must not move the caller's global RNG, nor depend on it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=ATTENTION)
    return model


def load_model(path: str | Path) -> PreTrainedModel:
    """A saved model, upcast to float32, with the lab's attention implementation."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=ATTENTION)
