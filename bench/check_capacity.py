"""Check the capacity model's shape scaling: time `analyze` on Qwen2-0.5B-shaped and Qwen2-7B-shaped blocks (body
matrices only, one step, one thread, back to back so both see the same machine load) and compare the measured time
ratio with the ratio of modelled flops (`bench/capacity.py`: 2·m·n² + 4·n³ per matrix).

Usage: python bench/check_capacity.py [--dir /tmp/opd-capacity] [--small-layers 4] [--big-layers 1] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from capacity import MODELS, flops, matrices  # noqa: E402


def build(root: Path, model: str, layers: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config

    if (root / "built").exists():
        return
    h, inter, _, heads, kv, vocab, tied = MODELS[model]
    cfg = Qwen2Config(hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied)
    kvd = h // heads * kv
    shapes = {"q_proj": (h, h), "k_proj": (kvd, h), "v_proj": (kvd, h), "o_proj": (h, h)}
    mlp = {"gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
    gen = torch.Generator().manual_seed(0)
    sd0, sd1 = {}, {}
    for i in range(layers):
        for group, table in (("self_attn", shapes), ("mlp", mlp)):
            for name, s in table.items():
                key = f"model.layers.{i}.{group}.{name}.weight"
                w = 0.02 * torch.randn(s, generator=gen)
                sd0[key] = w.to(torch.bfloat16)
                d = 1e-3 * (torch.randn(s[0], 4, generator=gen) @ torch.randn(4, s[1], generator=gen))
                sd1[key] = (w + d + 1e-3 * torch.randn(s, generator=gen)).to(torch.bfloat16)
    for sd, d in ((sd0, root / "base"), (sd1, root / "run" / "checkpoint-1")):
        d.mkdir(parents=True, exist_ok=True)
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        cfg.save_pretrained(d)
    (root / "built").write_text("ok")


def child(root: Path) -> None:
    import torch

    from opd_dynamics import analyze
    from opd_dynamics.executors import limit_threads

    limit_threads(1)
    t0 = time.perf_counter()
    analyze([root / "run"], base=root / "base", progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "threads": torch.get_num_threads()}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-capacity")
    ap.add_argument("--small-layers", type=int, default=4)
    ap.add_argument("--big-layers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child")
    a = ap.parse_args()
    if a.child:
        return child(Path(a.child))
    cases = {"0.5b": a.small_layers, "7b": a.big_layers}
    roots = {m: Path(a.dir) / f"{m}-l{n}" for m, n in cases.items()}
    for m, n in cases.items():
        build(roots[m], m, n)
    load0 = os.getloadavg()[0]
    times: dict[str, list[float]] = {m: [] for m in cases}
    for _ in range(a.repeat):
        for m in cases:
            out = subprocess.run([sys.executable, __file__, "--child", str(roots[m])], capture_output=True, text=True,
                                 check=True)
            times[m].append(json.loads(out.stdout.strip().splitlines()[-1])["seconds"])
    model = {m: flops(matrices(m, layers=n, body_only=True)) for m, n in cases.items()}
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"# one thread; load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; medians of {a.repeat}")
    print("| block | layers | modelled GFLOP | seconds | implied GFLOP/s |\n|---|---|---|---|---|")
    for m in cases:
        print(f"| {m} | {cases[m]} | {model[m] / 1e9:.0f} | {med[m]:.2f} ({', '.join(f'{x:.2f}' for x in times[m])}) | "
              f"{model[m] / med[m] / 1e9:.1f} |")
    print(f"measured time ratio 7b/0.5b = {med['7b'] / med['0.5b']:.2f}; modelled flop ratio = "
          f"{model['7b'] / model['0.5b']:.2f}")


if __name__ == "__main__":
    main()
