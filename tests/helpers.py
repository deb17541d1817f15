"""Shared test helpers: build a metric's view from plain tensors, run a metric the way the engine does."""
from __future__ import annotations

import numpy as np
import torch

from opd_dynamics.metrics.registry import Spec
from opd_dynamics.naming import Part
from opd_dynamics.view import ModuleView


def view_of(w0, wt, *, step: int = 1, ref_step: int = 0, kind: str = "mlp_up", cache=None,
            method: str = "gram") -> ModuleView:
    """A ModuleView of W_t against W_ref = w0 (numpy or torch, any float dtype), as the engine builds it."""
    w0 = torch.as_tensor(w0)
    wt = torch.as_tensor(wt)
    delta = wt.to(torch.float32, copy=True).sub_(w0)
    part = Part("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight", 0, kind)
    return ModuleView("run", part, step, ref_step, delta, w0, wt, method, {} if cache is None else cache)


def compute(name: str, w0, wt, **args):
    """Run a simple (non-trajectory) metric on one (W0, W_t) pair; returns its value or dict of values."""
    return Spec(name, args).build()(view_of(w0, wt))


def trajectory(name: str, w0, steps: dict[int, np.ndarray], *, rows: bool = False, **args) -> dict:
    """Run a trajectory metric over {step: W_t}; returns {step: value} (the row named ``name`` where the metric
    returns several, e.g. a similarity and its ``_chance``), or every output row with ``rows=True``."""
    m = Spec(name, args).build()
    cache: dict = {}
    states = {s: m.collect(view_of(w0, wt, step=s, cache=cache)) for s, wt in sorted(steps.items())}
    out = m.finalize(states)
    if rows:
        return out
    return {s: v[name] if isinstance(v, dict) and name in v else v for s, v in out.items()}


def low_rank_plus_noise(m: int, n: int, rank: int, noise: float, seed: int = 0, decay: float = 0.7) -> np.ndarray:
    """A matrix that looks like a real update: a decaying rank-`rank` part plus dense noise (float64)."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((m, rank)))[0]
    v = np.linalg.qr(rng.standard_normal((n, rank)))[0]
    s = decay ** np.arange(rank)
    return (u * s) @ v.T + noise * rng.standard_normal((m, n)) / np.sqrt(max(m, n))


def rank1_pca_evr_oracle(top_left, w0, steps: dict[int, np.ndarray]) -> dict[str, float]:
    """float64 oracle of ``rank1_pca_evr``: the top left singular vector u₁ of each ΔW_t (``top_left(ΔW)``; signs
    aligned step to step), centred, and the explained-variance ratios of its first two principal components."""
    rows, prev = [], None
    for t in sorted(steps):
        u = top_left(steps[t], w0)
        if prev is not None and u @ prev < 0:
            u = -u
        rows.append(u)
        prev = u
    x = np.stack(rows)
    sv = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    return {"rank1_pca_evr1": sv[0] / sv.sum(), "rank1_pca_evr2": sv[1] / sv.sum()}


def gkd_setup(layers: int = 1):
    """The tiny on-policy distillation setup of the TRL ``GKDTrainer`` tests: (tokenizer, ``llama(hidden, seed)``,
    rows). A character tokenizer with a bare chat template, a Llama of ``layers`` layers built from its config, and
    16 ``messages`` rows "a+b=" → "a+b" for a, b < 4."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from opd_dynamics.lab.tokenizer import char_tokenizer

    tok = char_tokenizer()
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

    def llama(hidden: int, seed: int):
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))

    rows = [{"messages": [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": str(a + b)}]}
            for a in range(4) for b in range(4)]
    return tok, llama, rows
