"""Build a Qwen2-shaped bf16 trajectory and time `analyze` on CUDA and on the CPU (each in its own process).

Shapes: ``0.5b`` (hidden 896, intermediate 4864, 14/2 heads, vocab 151936) and ``7b`` (hidden 3584, intermediate
18944, 28/4 heads, vocab 152064), with ``--layers`` blocks (fewer than the real 24/28 keep every matrix shape, so
per-layer costs extrapolate) and tied embeddings. Writes one JSON line per measurement to ``--out``.

Usage: python bench/gpu_bench.py --shape 0.5b --layers 24 --steps 2 --dir /tmp/gpu-bench --out results.jsonl
       [--devices cuda,cpu] [--executor local]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SHAPES = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                 vocab_size=151936),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
               vocab_size=152064),
}


def build(root: Path, shape: str, layers: int, steps: int) -> None:
    """base/ + run/checkpoint-{1,2,4..}/: W₀ random, each step W₀ + a growing rank-4 drift + bf16-visible noise."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Qwen2Config

    marker = root / "built"
    if marker.exists():
        return
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = Qwen2Config(num_hidden_layers=layers, tie_word_embeddings=True, torch_dtype="bfloat16", **SHAPES[shape])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    gen = torch.Generator().manual_seed(0)
    base = {k: (0.02 * torch.randn(s, generator=gen)).to(torch.bfloat16) for k, s in shapes.items()}

    def write(sd, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        cfg.save_pretrained(d)

    write(base, root / "base")
    for i in range(1, steps + 1):
        sd = {}
        for k, v in base.items():
            if v.ndim == 2:
                m, n = v.shape
                d = 2e-3 * i * (torch.randn(m, 4, generator=gen) @ torch.randn(4, n, generator=gen)) / 4
                d.add_(torch.randn(m, n, generator=gen), alpha=1e-3)
                sd[k] = (v.float() + d).to(torch.bfloat16)
                del d
            else:
                sd[k] = v
        write(sd, root / "run" / f"checkpoint-{2 ** (i - 1)}")
        del sd
    marker.write_text("ok")


def child(root: Path, device: str, executor: str) -> None:
    import torch

    from opd_dynamics import analyze

    t0 = time.perf_counter()
    df = analyze([root / "run"], base=root / "base", device=device, progress=False, executor=executor)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    info = {"seconds": time.perf_counter() - t0, "rows": len(df),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda"):
        info["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        info["gpu"] = torch.cuda.get_device_name()
    print(json.dumps(info))


def read_floor(root: Path) -> dict:
    """Seconds to read every byte of every checkpoint once (page cache warm, as for analyze)."""
    from opd_dynamics.io.safetensors_file import SafetensorsFile

    t0, total = time.perf_counter(), 0
    for f in sorted(root.rglob("*.safetensors")):
        sf = SafetensorsFile(f)
        for k in sf.keys():
            total += sf.get_tensor(k).numel() * 2
    return {"seconds": time.perf_counter() - t0, "bytes": total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/gpu-bench")
    ap.add_argument("--out", default="gpu-bench.jsonl")
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--executor", default="local")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    root = Path(a.dir) / f"{a.shape}-l{a.layers}-s{a.steps}"
    if a.child:
        return child(root, a.child[0], a.child[1])
    t0 = time.perf_counter()
    build(root, a.shape, a.layers, a.steps)
    common = {"shape": a.shape, "layers": a.layers, "steps": a.steps, "load": os.getloadavg()[0],
              "cpus": len(os.sched_getaffinity(0)), "executor": a.executor}
    lines = [dict(common, what="build", seconds=time.perf_counter() - t0), dict(common, what="read", **read_floor(root))]
    for device in a.devices.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", device, a.executor, "--shape", a.shape,
                              "--layers", str(a.layers), "--steps", str(a.steps), "--dir", a.dir],
                             capture_output=True, text=True)
        if out.returncode != 0:
            lines.append(dict(common, what="analyze", device=device, error=out.stderr[-2000:]))
        else:
            lines.append(dict(common, what="analyze", device=device, **json.loads(out.stdout.strip().splitlines()[-1])))
    with open(a.out, "a") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
            print(json.dumps(line))


if __name__ == "__main__":
    main()
