"""Synthetic trajectories with planted update geometry, in a real HF Trainer layout (fast test/demo data).

A tiny Llama model is built from a ``transformers`` config and saved as the base W₀. Each run then writes
``checkpoint-N/`` directories whose attention/MLP updates follow a planted law:

- ``opd``: ΔW_t = g(t)·U D Vᵀ with a fixed rank-``2`` basis (locked from the first step) + small noise;
- ``rl``:  ΔW_t = g(t)·(rank-``8``, flatter spectrum) whose basis rotates away from its start over training.

So OPD has the higher σ₁/‖ΔW‖_F, lower effective rank and alignment to the final update near 1 early on.
This is *not* training: the reference runs (``opd_dynamics.lab``) are the real thing.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from .naming import classify, is_body

_RULES = {"opd": dict(rank=2, decay=0.5, rotate=0.0, noise=0.02),
          "rl": dict(rank=8, decay=0.9, rotate=1.0, noise=0.05)}


def tiny_llama(hidden: int = 32, layers: int = 2, vocab: int = 64, intermediate: int | None = None, seed: int = 0):
    """A randomly initialised tiny ``LlamaForCausalLM`` (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def _basis(shape, rank, gen):
    m, n = shape
    u = torch.linalg.qr(torch.randn(m, rank, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, rank, generator=gen, dtype=torch.float64))[0]
    return u, v


def planted_update(shape, t: float, kind: str, gen: torch.Generator, start: tuple, end: tuple) -> torch.Tensor:
    """ΔW at progress t ∈ (0, 1] for a planted run kind (see module docstring)."""
    rule = _RULES[kind]
    r = min(rule["rank"], *shape)
    d = torch.tensor([rule["decay"] ** i for i in range(r)], dtype=torch.float64)
    w = rule["rotate"] * t  # basis drifts from `start` to `end` as training progresses
    u = torch.linalg.qr((1 - w) * start[0][:, :r] + w * end[0][:, :r])[0]
    v = torch.linalg.qr((1 - w) * start[1][:, :r] + w * end[1][:, :r])[0]
    scale = 0.05 * math.sqrt(t)
    noise = rule["noise"] * torch.randn(*shape, generator=gen, dtype=torch.float64) / math.sqrt(max(shape))
    return scale * ((u * d) @ v.T + noise)


@contextlib.contextmanager
def quiet_saving():
    """Silence transformers' "Writing model shards" bar for one save (our own bars report progress)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def make_synthetic_runs(out_dir, *, steps=(1, 2, 4, 8, 16, 32), kinds=("opd", "rl"), layers: int = 2,
                        hidden: int = 32, vocab: int = 64, seed: int = 0, dtype: str = "float32") -> dict[str, Path]:
    """Write ``out_dir/base/`` and ``out_dir/<kind>/checkpoint-N/`` for each kind; return their paths."""
    out = Path(out_dir)
    model = tiny_llama(hidden, layers, vocab, seed=seed)
    tdtype = getattr(torch, dtype)
    with quiet_saving():
        model.to(tdtype).save_pretrained(out / "base", safe_serialization=True)
    base = {k: v.detach().to(torch.float64) for k, v in model.state_dict().items()}
    config = (out / "base" / "config.json").read_text()
    paths = {"base": out / "base"}
    last = max(steps)
    for ki, kind in enumerate(kinds):
        gen = torch.Generator().manual_seed(seed * 1000 + ki)
        bases = {k: (_basis(v.shape, 8, gen), _basis(v.shape, 8, gen)) for k, v in base.items()
                 if v.ndim == 2 and is_body(classify(k)[0])}
        log = []
        for step in steps:
            t = step / last
            sd = {}
            for k, v in base.items():
                if k in bases:
                    v = v + planted_update(v.shape, t, kind, gen, *bases[k])
                sd[k] = v.to(tdtype).contiguous()
            d = out / kind / f"checkpoint-{step}"
            d.mkdir(parents=True, exist_ok=True)
            save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
            (d / "config.json").write_text(config)
            log.append({"step": step, "loss": 1.0 / (1 + step)})
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": log}, indent=1))
        paths[kind] = out / kind
    return paths
