"""Do the tool's own thread choices slow `analyze` down on a shared machine?

Times `analyze` (default metrics, local executor) on a small synthetic trajectory in fresh processes, for each
combination of

- torch intra-op threads and numpy's OpenBLAS threads (the float64 Gram/eigh backend on machines where it is the
  faster): both at every CPU (both libraries' defaults), torch 1 with OpenBLAS left at its default (what
  ``torch.set_num_threads(1)`` alone gives), and both 1,
- the read-ahead thread: on (default) or off (``PREFETCH_MAX_BYTES = 0``: every read on demand),
- competing load: none added, or ``--hogs`` busy-looping processes (other jobs on the same cores),

interleaved over ``--repeat`` rounds (medians printed), with the load average and CPU model beside the numbers.

Usage: python bench/bench_threads.py [--hidden 384] [--layers 4] [--steps 4] [--repeat 3] [--hogs 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(root: Path, threads: int, blas: int, prefetch: bool) -> None:
    import torch

    from opd_dynamics import analyze, engine
    from opd_dynamics.executors import set_blas_threads
    from opd_dynamics.linalg import backend

    torch.set_num_threads(threads)
    set_blas_threads(blas)

    if not prefetch:
        engine.PREFETCH_MAX_BYTES = 0
    t0 = time.perf_counter()
    analyze([root / "opd"], base=root / "base", progress=False)
    print(json.dumps({"seconds": time.perf_counter() - t0, "backend": backend()}))


def hog() -> None:
    x = 0
    while True:
        x += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hogs", type=int, default=2)
    ap.add_argument("--child", nargs=4)
    ap.add_argument("--limit", type=float, default=120, help="seconds before a run is stopped and reported as >limit")
    ap.add_argument("--hog", action="store_true")
    a = ap.parse_args()
    if a.hog:
        return hog()
    if a.child:
        return child(Path(a.child[0]), int(a.child[1]), int(a.child[2]), a.child[3] == "1")
    from opd_dynamics.synthetic import make_synthetic_runs

    root = Path(tempfile.mkdtemp(prefix="opd-threads-"))
    make_synthetic_runs(root, steps=tuple(2 ** i for i in range(a.steps)), kinds=("opd",), layers=a.layers,
                        hidden=a.hidden)
    cpus = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    shapes = [(cpus, cpus, True), (1, cpus, True), (1, 1, True), (1, 1, False)]
    configs = [(t, b, p, h) for h in (0, a.hogs) for t, b, p in shapes]
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"# {cpu}; {cpus} CPUs in the affinity mask; load average {os.getloadavg()[0]:.2f} at start; "
          f"hidden {a.hidden}, {a.layers} layers, {a.steps} checkpoints; each run stopped after {a.limit:.0f} s",
          flush=True)
    print("| round | torch threads | OpenBLAS threads | read-ahead | added busy processes | seconds | load |",
          flush=True)
    print("|---|---|---|---|---|---|---|", flush=True)
    for r in range(a.repeat):
        for t, b, p, h in configs:
            hogs = [subprocess.Popen([sys.executable, __file__, "--hog"]) for _ in range(h)]
            try:
                out = subprocess.run([sys.executable, __file__, "--child", str(root), str(t), str(b), "1" if p else "0"],
                                     capture_output=True, text=True, check=True, env=env, timeout=a.limit)
                sec = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]
            except subprocess.TimeoutExpired:
                sec = float("inf")
            finally:
                for q in hogs:
                    q.kill()
                    q.wait()
            times[(t, b, p, h)].append(sec)
            shown = f"{sec:.2f}" if sec != float("inf") else f"> {a.limit:.0f}"
            print(f"| {r + 1} | {t} | {b} | {'on' if p else 'off'} | {h} | {shown} | {os.getloadavg()[0]:.1f} |",
                  flush=True)
    print("\nmedians:", flush=True)
    for (t, b, p, h), v in times.items():
        print(f"torch {t}, OpenBLAS {b}, read-ahead {'on' if p else 'off'}, +{h} busy: {statistics.median(v):.2f} s",
              flush=True)


if __name__ == "__main__":
    main()
