"""Benchmark incremental re-analysis: add one checkpoint to a 16-checkpoint run and analyse again with the same -o.

Builds (once, under --dir) a Qwen2-0.5B-shaped run with ``bench_analyze.build`` (hidden 896, intermediate 4864,
vocab 151936, tied embeddings, bf16, sharded; ``--layers`` of its 24 layers) with 17 checkpoints, and a run
directory that links the first 16. Then, in this process, with the default metric set (which includes
``alignment_to_final``, a trajectory metric whose final step changes):

- full16:  ``analyze -o RES`` on the 16 checkpoints (cold cache: computes and keeps every cell)
- inc17:   link the 17th checkpoint, ``analyze -o RES`` again (reads only it and W₀, re-finalises the trajectories)
- fresh17: ``analyze --no-cache -o RES2`` on the 17 checkpoints (what a re-run cost before)

and checks inc17's table equals fresh17's. Prints the CPU, the load average and the ratio inc17 / fresh17
(target ≤ 1/8).

Usage: python bench/bench_incremental.py [--dir /tmp/opd-bench-inc] [--layers 4]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-bench-inc")
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    from bench_analyze import build

    root = Path(args.dir)
    build(root, args.layers, 17)
    import pandas as pd

    from opd_dynamics import analyze

    ckpts = sorted((root / "run").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    run = root / "live"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir()
    for c in ckpts[:16]:
        os.symlink(c, run / c.name)
    res, res2 = root / "res", root / "res2"
    for d in (res, res2):
        shutil.rmtree(d, ignore_errors=True)
    kw = dict(base=root / "base", progress=False, device="cpu")
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"Qwen2-0.5B shape with {args.layers} of 24 layers, bf16, default metrics")
    times = {}
    t = time.perf_counter()
    analyze([run], out=res, **kw)
    times["full16"] = time.perf_counter() - t
    os.symlink(ckpts[16], run / ckpts[16].name)
    t = time.perf_counter()
    inc = analyze([run], out=res, **kw)
    times["inc17"] = time.perf_counter() - t
    t = time.perf_counter()
    fresh = analyze([run], out=res2, cache=False, **kw)
    times["fresh17"] = time.perf_counter() - t
    pd.testing.assert_frame_equal(inc, fresh)
    size = sum(f.stat().st_size for f in (res / "cache").rglob("*") if f.is_file())
    for k, v in times.items():
        print(f"{k:8s} {v:8.1f} s")
    print(f"inc17 / fresh17 = {times['inc17'] / times['fresh17']:.3f} (target <= 0.125); tables identical; "
          f"cache {size / 2**20:.0f} MB; load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
