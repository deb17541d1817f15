"""Generation throughput of the library's one generation path (``opd_dynamics.generation.generate``: left-padded batches,
KV cache) for the reference models, as the ``accuracy`` evaluator runs it.

    python bench/bench_generation.py                 # lab default student + teacher, and a Qwen2-0.5B shape
    python bench/bench_generation.py --device cuda   # bf16 on CUDA (what InterventionEngine uses there)

Weights are random: throughput only, no quality. Prints new tokens per second (response tokens up to and including
``<eos>`` / wall time) per model and batch size, with the machine's load average.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def qwen05b(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(cfg)


def main() -> None:
    from opd_dynamics.generation import generate
    from opd_dynamics.lab.models import ModelSpec, build_model
    from opd_dynamics.lab.presets import get_preset
    from opd_dynamics.lab.tokenizer import char_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--skip-qwen", action="store_true")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tok = char_tokenizer()
    preset = get_preset("default")
    models = {"lab default student": build_model(preset.student, tok, seed=0),
              "lab default teacher": build_model(preset.teacher, tok, seed=0)}
    if not a.skip_qwen:
        models["Qwen2-0.5B shape"] = qwen05b(tok)
    print(f"# {cpu_model()}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()}, "
          f"device {device}, {dtype}")
    prompt = "Question: 47+38=? Work it out step by step. "
    for name, model in models.items():
        model.to(device, dtype).eval()
        for b in [int(x) for x in a.batches.split(",")]:
            prompts = [prompt[: 30 + (i % 7)] for i in range(b)]  # uneven lengths: left padding at work
            generate(model, tok, prompts[:1], 2, 0.0)  # warm-up
            t = time.perf_counter()
            r = generate(model, tok, prompts, a.new, 0.0)
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t
            n = int(r.response_mask.sum())
            print(f"{name:22s} batch {b:3d}: {n:6d} new tokens in {dt:7.2f} s = {n / dt:9.1f} tokens/s "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
