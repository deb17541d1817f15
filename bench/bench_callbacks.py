"""Benchmark the in-training callbacks on a reference run: their cost per logged step as a share of step time.

Trains the lab's reference OPD arm (``--preset``, default ``small``: a 48-wide, 8-layer Qwen2 student distilled from
a 96-wide teacher on two-digit addition) from its W₀ with the reference loop, once with no callback and once with
``GeometryCallback`` (default metrics + principal angles, every ``--every`` steps) and ``TokenDiagnosticsCallback``
(k = 16, a 32-prompt probe batch) as step hooks. Prints the CPU, the load average, each callback's mean cost per
logged step over the mean training-step time, and the amortised overhead (total callback time / training time).

Usage: python bench/bench_callbacks.py [--dir /tmp/opd-bench-cb] [--preset small] [--every 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-bench-cb")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--every", type=int, default=4)
    args = ap.parse_args()
    import torch

    from bench_incremental import cpu_model
    from opd_dynamics.callbacks import GeometryCallback, TokenDiagnosticsCallback
    from opd_dynamics.lab import build_reference_runs, char_tokenizer, make_task, run_arm
    from opd_dynamics.lab.models import load_model

    refs = build_reference_runs(args.dir, preset=args.preset, progress=False)
    tok, task = char_tokenizer(), make_task(args.preset)
    base, teacher = load_model(refs.base), load_model(refs.teacher)
    prompts = [e.prompt + e.answer for e in task.examples("validation")[:32]]
    probe = tok(prompts, return_tensors="pt", padding=True)
    print(f"# {cpu_model()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; preset {args.preset}, "
          f"OPD arm, callbacks every {args.every} steps")
    t = time.perf_counter()
    _, plain = run_arm("opd", base, teacher, tok, task, args.preset, None, progress=False)
    plain_s = time.perf_counter() - t
    geo = GeometryCallback(["spectral_norm", "spectral_ratio", "effective_rank", "stable_rank", "relative_update",
                            "principal_angles"], every=args.every)
    geo.start(base)
    tokens = TokenDiagnosticsCallback(probe, teacher=teacher, every=args.every)
    t = time.perf_counter()
    run_arm("opd", base, teacher, tok, task, args.preset, None, step_hooks=[geo, tokens], progress=False)
    hooked_s = time.perf_counter() - t
    for name, cb in (("geometry", geo), ("tokens", tokens)):
        shares = [h[f"{name}/cost_share"] for h in cb.history if h[f"{name}/cost_share"] == h[f"{name}/cost_share"]]
        print(f"{name:9s} logged {len(cb.history)} times; cost per logged step {sum(shares) / len(shares):.3f} of a "
              f"step (mean {cb.cost / len(cb.history) * 1e3:.1f} ms); amortised {cb.cost / cb.train_time:.3f}")
    print(f"run without callbacks {plain_s:.1f} s, with both {hooked_s:.1f} s (x{hooked_s / plain_s:.2f}; the run "
          f"includes evaluations); load average {os.getloadavg()[0]:.2f} at end")
    del torch


if __name__ == "__main__":
    main()
