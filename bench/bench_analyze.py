"""Benchmark `analyze` on a Qwen2-0.5B-shaped model against the I/O floor and a naive script.

Builds (once, under --dir, in a child process) a base and N perturbed checkpoints with Qwen2-0.5B's shapes (hidden 896, 24 layers,
intermediate 4864, vocab 151936, tied embeddings), bf16, sharded, in `checkpoint-N/` layout. Then times, each in
its own process so peak RSS (that process's VmHWM) is per measurement; the header names the CPU, the BLAS
libraries, the backend chosen for the float64 Gram and the load average:

- io:      read every byte of every tensor once (the I/O floor; page cache warm, as for every figure here)
- svd:     one float32 `svdvals` per matrix per checkpoint on tensors already in memory (compute floor)
- naive:   load each full state dict, `torch.linalg.svdvals` per matrix of W_t − W0
- analyze: `opd_dynamics.analyze` with the default metric set (float64 Gram path)

Usage: python bench/bench_analyze.py [--dir /tmp/opd-bench] [--layers 24] [--steps 3] [--repeat 1]
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


def build(root: Path, layers: int, steps: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Qwen2Config

    marker = root / f"built-{layers}-{steps}"
    if marker.exists():
        return
    cfg = Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=layers, num_attention_heads=14,
                      num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, torch_dtype="bfloat16")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    gen = torch.Generator().manual_seed(0)
    base = {k: (0.02 * torch.randn(s, generator=gen)).to(torch.bfloat16) for k, s in shapes.items()}

    def write(sd, d: Path, n_shards=2):
        d.mkdir(parents=True, exist_ok=True)
        names = list(sd)
        wm = {}
        for i in range(n_shards):
            fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
            chunk = {k: sd[k] for k in names[i::n_shards]}
            save_file(chunk, d / fname, metadata={"format": "pt"})
            wm.update({k: fname for k in chunk})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        cfg.save_pretrained(d)

    write(base, root / "base")
    for i in range(1, steps + 1):
        step = 2 ** (i - 1)
        sd = {}
        for k, v in base.items():  # a low-rank drift plus bf16-visible noise, growing with the step
            if v.ndim == 2:
                m, n = v.shape
                u = torch.randn(m, 4, generator=gen)
                w = torch.randn(4, n, generator=gen)
                d = 2e-3 * i * (u @ w) / 4 + 1e-3 * torch.randn(m, n, generator=gen)
                sd[k] = (v.float() + d).to(torch.bfloat16)
            else:
                sd[k] = v
        write(sd, root / "run" / f"checkpoint-{step}")
    marker.write_text("ok")


def files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.safetensors"))


def job_io(root: Path) -> dict:
    from opd_dynamics.io.safetensors_file import SafetensorsFile

    total = 0
    for f in files(root):
        sf = SafetensorsFile(f)
        for k in sf.keys():
            t = sf.get_tensor(k)  # a plain read into fresh memory: every byte is really read (no mmap)
            total += t.numel() * t.element_size()
    return {"bytes": total}


def _matrices(sd):
    return {k: v for k, v in sd.items() if v.ndim == 2}


def job_svd(root: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    n, t_svd = 0, 0.0
    for d in sorted((root / "run").iterdir()):
        for f in sorted(d.glob("*.safetensors")):
            for k, v in _matrices(load_file(f)).items():
                x = v.float()
                x = x if x.shape[0] >= x.shape[1] else x.T
                t0 = time.perf_counter()
                torch.linalg.svdvals(x)
                t_svd += time.perf_counter() - t0
                n += 1
    return {"matrices": n, "svd_seconds": t_svd}


def job_naive(root: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    def full(d):
        sd = {}
        for f in sorted(d.glob("*.safetensors")):
            sd.update(load_file(f))
        return sd

    base = full(root / "base")
    n = 0
    for d in sorted((root / "run").iterdir()):
        sd = full(d)
        for k, v in _matrices(sd).items():
            torch.linalg.svdvals(v.float() - base[k].float())
            n += 1
    return {"matrices": n}


def job_analyze(root: Path) -> dict:
    import opd_dynamics
    from opd_dynamics.executors import default_threads

    threads = default_threads(1)  # what analyze is about to choose (other processes' load now, the affinity mask)
    df = opd_dynamics.analyze([root / "run"], base=root / "base", progress=False)
    return {"rows": len(df), "threads": threads}


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). Not ``getrusage``'s ru_maxrss: Linux carries the parent's peak across
    fork + exec into it, so a child started by a parent that had just built the data reported the build's 3.9 GB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(job: str, root: Path) -> None:
    t0 = time.perf_counter()
    info = globals()[f"job_{job}"](root)
    info["seconds"] = time.perf_counter() - t0
    info["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(info))


def measure(job: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", job, "--dir", str(root)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-bench")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child")
    a = ap.parse_args()
    root = Path(a.dir)
    if a.child == "build":
        return build(root, a.layers, a.steps)
    if a.child:
        return child(a.child, root)
    if not (root / f"built-{a.layers}-{a.steps}").exists():  # build in a child: this process stays small
        subprocess.run([sys.executable, __file__, "--child", "build", "--dir", str(root), "--layers", str(a.layers),
                        "--steps", str(a.steps)], check=True, capture_output=True)
    from opd_dynamics.machine import describe
    print(f"# Qwen2-0.5B-shaped, {a.layers} layers, {a.steps} checkpoints + base, bf16, 2 shards each")
    print(f"# {describe()}")
    res = {j: [] for j in ("io", "svd", "naive", "analyze")}
    for _ in range(a.repeat):
        for j in res:
            res[j].append(measure(j, root))
    med = {j: sorted(r, key=lambda x: x["seconds"])[len(r) // 2] for j, r in res.items()}
    io, svd, naive, an = med["io"]["seconds"], med["svd"]["svd_seconds"], med["naive"]["seconds"], med["analyze"]["seconds"]
    print(f"| measurement | seconds | peak RSS (MiB) |\n|---|---|---|")
    for j in res:
        print(f"| {j} | {med[j]['seconds']:.1f} | {med[j]['peak_rss_mb']:.0f} |")
    print(f"| svdvals only (compute floor, inside `svd`) | {svd:.1f} | |")
    print(f"\nanalyze chose {med['analyze'].get('threads', '?')} compute thread(s); torch's default for the floor")
    print(f"\nI/O floor: {med['io']['bytes'] / 2**30:.2f} GiB read")
    print(f"analyze / (I/O floor + one svdvals per matrix) = {an / (io + svd):.2f}  (target <= 1.15)")
    print(f"analyze / svdvals only = {an / svd:.2f}  (the I/O floor moves with the page cache; this ratio does not)")
    print(f"analyze / naive = {an / naive:.2f}  (target <= 0.7)")
    print(f"analyze peak RSS = {med['analyze']['peak_rss_mb']:.0f} MiB (target < 1536 MiB = 1.5 GiB)")


if __name__ == "__main__":
    main()
