"""Tiny runs built in code for the intervention tests: a 4-layer Llama with the lab's character tokenizer,
W₀ plus checkpoint-{1,2,4}/ whose weights drift from W₀ by seeded noise (a planted rank-2 update per matrix),
and a 2-layer GPT-2 with fused c_attn (seconds, no downloads). The session fixtures ``tiny_llama_runs`` and
``tiny_gpt2_runs`` in ``conftest.py`` build them once per test session."""
from __future__ import annotations

from pathlib import Path

import torch


def _save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_llama_runs(out: Path) -> dict[str, Path]:
    from opd_dynamics.lab.models import ModelSpec, build_model
    from opd_dynamics.lab.tokenizer import char_tokenizer

    tok = char_tokenizer()
    spec = ModelSpec(hidden=16, layers=4, heads=2, intermediate=32, max_positions=48, tie_embeddings=False)
    model = build_model(spec, tok, seed=0)
    _save(model, tok, out / "base")
    gen = torch.Generator().manual_seed(1)
    deltas = {}
    for name, p in model.named_parameters():
        if p.ndim == 2:
            u = torch.randn(p.shape[0], 2, generator=gen)
            v = torch.randn(2, p.shape[1], generator=gen)
            deltas[name] = 0.05 * (u @ v) / 2
        else:
            deltas[name] = 0.01 * torch.randn(p.shape, generator=gen)
    for step in (1, 2, 4):
        m = build_model(spec, tok, seed=0)
        with torch.no_grad():
            for name, p in m.named_parameters():
                p.add_(deltas[name] * step / 4 + 0.002 * torch.randn(p.shape, generator=gen))
        _save(m, tok, out / "run" / f"checkpoint-{step}")
    teacher = build_model(spec, tok, seed=5)
    _save(teacher, tok, out / "teacher")
    return {"base": out / "base", "run": out / "run", "teacher": out / "teacher"}


def build_tiny_gpt2_runs(out: Path) -> dict[str, Path]:
    from transformers import GPT2Config, GPT2LMHeadModel

    from opd_dynamics.lab.tokenizer import char_tokenizer

    tok = char_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=32,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    _save(GPT2LMHeadModel(cfg), tok, out / "base")
    torch.manual_seed(0)
    m = GPT2LMHeadModel(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    _save(m, tok, out / "run" / "checkpoint-2")
    return {"base": out / "base", "run": out / "run"}


def tiny_task(n: int = 12):
    """A one-digit addition task (the lab's), small enough for a few greedy generations."""
    from opd_dynamics.task.addition import AdditionTask

    return AdditionTask(digits=1, n_train=20, n_validation=n, n_test=n, seed=0)
