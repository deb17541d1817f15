"""Rank-sharded formats (verl FSDP, NeMo-RL) against HF safetensors: read throughput and `analyze` peak RSS.

(`bench_formats.py` covers the DCP and Megatron readers.)

Builds (once, under --dir) one trajectory of a Qwen2-shaped model in fp32 — base + --steps checkpoints — as HF
safetensors (`checkpoint-N/`), and re-saves it with torch's own FSDP2 on --ranks gloo CPU ranks as verl writes it
(`global_step_N/actor/model_world_size_W_rank_R.pt`) and as NeMo-RL writes it (`step_N/policy/weights/model/`,
torch's HuggingFaceStorageWriter). Then, each in its own process (so peak RSS, VmHWM, is per measurement):

- read <fmt>:    `get_tensor` of every tensor of one step through opd_dynamics' reader (MB/s, page cache warm)
- analyze <fmt>: `opd_dynamics.analyze` of the whole run with the default metrics (seconds, peak RSS)

Default shape: Qwen2-0.5B's hidden 896 / intermediate 4864 / 14 heads, 4 layers (not 24) and vocab 32768 (not
151936), so the 4-rank FSDP build fits a shared 2-core machine; pass --layers 24 --vocab 151936 for the full shape.

Usage: python bench/bench_shards.py [--dir /tmp/opd-bench-shards] [--ranks 4] [--steps 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {"safetensors": "hf", "verl-fsdp": "verl", "nemo-rl": "nemo"}


def build(d: Path, layers: int, vocab: int, steps: int, ranks: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    sys.path.insert(0, str(ROOT / "tests"))
    from verl_shards import write_verl_runs

    torch.manual_seed(0)
    cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                      num_hidden_layers=layers, vocab_size=vocab, tie_word_embeddings=False)  # untied: a tied pair is one
    # storage, which the safetensors writer behind NeMo-RL refuses
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(d / "base")
    g = torch.Generator().manual_seed(1)
    for s in range(1, steps + 1):
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 2:
                    p += 1e-3 * torch.randn(p.shape[0], 1, generator=g) @ torch.randn(1, p.shape[1], generator=g)
        model.save_pretrained(d / "hf" / f"checkpoint-{s}")
    del model
    write_verl_runs(d / "hf", {"fsdp2": d / "verl", "nemo": d / "nemo"}, world_size=ranks)


def child(kind: str, fmt: str, d: Path) -> dict:
    import torch

    from opd_dynamics import analyze
    from opd_dynamics.io import formats

    run = d / FORMATS[fmt]
    t0 = time.perf_counter()
    if kind == "read":
        step = sorted(p for p in run.iterdir() if p.is_dir())[-1]
        ck = formats.open(step)
        nbytes = 0
        for name in ck.keys():
            t = ck.get_tensor(name)
            nbytes += t.numel() * t.element_size()
            del t
        out = {"mb": nbytes / 2**20}
    else:
        df = analyze([run], base=d / "base", progress=False, device="cpu")
        out = {"rows": len(df)}
    out["s"] = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child would report its parent's peak
    out["peak_rss_mb"] = next(int(line.split()[1]) for line in open("/proc/self/status")
                              if line.startswith("VmHWM")) / 1024
    out["torch"] = torch.__version__
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-bench-shards")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    d = Path(a.dir)
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], d)))
        return
    if not (d / "nemo").exists():
        t0 = time.perf_counter()
        build(d, a.layers, a.vocab, a.steps, a.ranks)
        print(f"built in {time.perf_counter() - t0:.0f} s under {d}")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    print(f"# {cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; hidden 896, {a.layers} layers, vocab "
          f"{a.vocab}, fp32, {a.ranks} ranks, {a.steps} steps")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    res = {}
    for kind in ("read", "analyze"):
        for fmt in FORMATS:
            cmd = [sys.executable, __file__, "--dir", str(d), "--child", kind, fmt]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout.splitlines()[-1])
            res[(kind, fmt)] = r
            extra = f"{r['mb'] / r['s']:.0f} MB/s" if kind == "read" else f"{r['rows']} rows"
            ref = res[(kind, "safetensors")]
            print(f"{kind:8s} {fmt:12s} {r['s']:7.2f} s  {extra:>12s}  peak RSS {r['peak_rss_mb']:7.0f} MB  "
                  f"({r['s'] / ref['s']:.2f}x time, {r['peak_rss_mb'] / ref['peak_rss_mb']:.2f}x RSS of safetensors)")
    print(f"# load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
