"""Read throughput of the DCP and Megatron readers against HF safetensors, on the same weights.

Builds (once, under --dir) a Llama-shaped model (hidden 1024, 4 layers, intermediate 2816, vocab 8192, fp32,
~69 M parameters) as HF safetensors, re-saves it with the real writers on 2 gloo ranks (torchtitan-style
``dcp.save`` of an FSDP2 model, accelerate's ``save_fsdp_model``, megatron-core TP = 2; the test writers in
``tests/``), then reads every tensor of each format once per repeat through ``opd_dynamics.io.formats.open``
(page cache warm) and prints MB/s, the ratio to safetensors, the CPU and the load average.

Usage: python bench/bench_formats.py [--dir /tmp/opd-bench-formats] [--repeat 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def build(root: Path) -> dict[str, Path]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf = root / "hf"
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16,
                      num_key_value_heads=4, vocab_size=8192, max_position_embeddings=64, tie_word_embeddings=False)
    if not (root / "built").exists():
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).save_pretrained(hf / "base", safe_serialization=True)
        step = hf / "run" / "checkpoint-1"
        LlamaForCausalLM.from_pretrained(hf / "base").save_pretrained(step, safe_serialization=True)
        import dcp_writers
        import megatron_writer

        dcp_writers.write(hf / "run", root, ["torchtitan", "accelerate"])
        megatron_writer.write(hf / "run", root / "megatron")
        (root / "built").write_text("ok")
    return {"safetensors": hf / "run" / "checkpoint-1", "dcp (torchtitan)": root / "torchtitan/checkpoint/step-1",
            "dcp (accelerate)": root / "accelerate/checkpoint-1", "megatron (TP=2)": root / "megatron/iter_0000001"}


def read_all(path: Path, base_config: dict) -> tuple[float, int]:
    from opd_dynamics.io import formats

    t0 = time.perf_counter()
    r = formats.open(path, base_config=base_config)
    nbytes = 0
    for k in r.keys():
        t = r.get_tensor(k)
        nbytes += t.numel() * t.element_size()
        del t
    return time.perf_counter() - t0, nbytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-bench-formats")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = build(root)
    cfg = json.loads((root / "hf" / "base" / "config.json").read_text())
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"# {cpu}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")
    best = {}
    for _ in range(a.repeat):  # interleaved so a neighbour's load falls on every format alike
        for name, p in paths.items():
            s, n = read_all(p, cfg)
            best[name] = min(best.get(name, (1e9, n)), (s, n))
    ref = best["safetensors"][1] / best["safetensors"][0]
    print("| format | MB read | seconds (best of %d) | MB/s | vs safetensors |" % a.repeat)
    print("|---|---|---|---|---|")
    for name, (s, n) in best.items():
        print(f"| {name} | {n / 1e6:.0f} | {s:.3f} | {n / 1e6 / s:.0f} | {n / s / ref:.2f}× |")
    print(f"# load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
