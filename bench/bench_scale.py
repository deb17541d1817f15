"""Wall time of `analyze` on each executor: local, processes:N and a local Ray cluster with N workers.

Uses the Qwen2-0.5B-shaped trajectory of `bench_analyze.py` (built once under --dir; `--layers` fewer than 24 keeps
every matrix shape and the embedding, with fewer blocks). Each measurement runs in its own process, page cache
warm. For Ray the cluster start (`ray.init`) is timed apart from the analysis, since a real cluster is already up.

Each measurement with N workers runs on N cores (``taskset -c 0..N-1`` when N is below the CPUs allowed), so
local (one process, N torch threads), processes:N (N processes × 1 thread) and ray with N workers use equal cores.
Prints their seconds, the overhead ratio of each executor against local at equal cores and, with several N, each
executor's speedup from the smallest N. Every figure comes with the load average and CPU model.

Usage: python bench/bench_scale.py [--dir /tmp/opd-bench] [--layers 24] [--steps 3] [--workers 1,2] [--repeat 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_analyze import build  # noqa: E402


def child(root: Path, executor: str, workers: int) -> None:
    from opd_dynamics import analyze

    info = {}
    t0 = time.perf_counter()
    if executor == "ray":
        import ray

        ray.init(address="local", num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        info["startup"] = time.perf_counter() - t0
        t0 = time.perf_counter()
    spec = {"local": "local", "processes": f"processes:{workers}", "ray": "ray"}[executor]
    df = analyze([root / "run"], base=root / "base", progress=False, executor=spec)
    info.update(seconds=time.perf_counter() - t0, rows=len(df))
    print(json.dumps(info))


def measure(root: Path, executor: str, workers: int, layers: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["RAY_AUTH_MODE"] = "disabled"
    env["OPD_DYNAMICS_THREADS"] = str(workers) if executor == "local" else ""  # local on all N cores, whatever the load
    allowed = sorted(os.sched_getaffinity(0))
    pin = ["taskset", "-c", ",".join(map(str, allowed[:workers]))] if workers < len(allowed) else []
    out = subprocess.run([*pin, sys.executable, __file__, "--child", executor, str(workers), "--dir", str(root.parent),
                          "--layers", str(layers), "--steps", str(steps)], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{executor}:{workers} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-bench")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--workers", default="")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--executors", default="local,processes,ray")
    ap.add_argument("--child", nargs=2)
    a = ap.parse_args()
    root = Path(a.dir) / f"layers{a.layers}-steps{a.steps}"
    if a.child:
        return child(root, a.child[0], int(a.child[1]))
    build(root, a.layers, a.steps)
    cpus = len(os.sched_getaffinity(0))
    counts = [int(w) for w in a.workers.split(",")] if a.workers else [cpus]
    executors = a.executors.split(",")
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    load0 = os.getloadavg()[0]
    res: dict[tuple[str, int], list[dict]] = {}
    for _ in range(a.repeat):
        for n in counts:
            for ex in executors:
                res.setdefault((ex, n), []).append(measure(root, ex, n, a.layers, a.steps))
    print(f"# Qwen2-0.5B-shaped, {a.layers} layers, {a.steps} checkpoints + base, bf16; {cpu}; {cpus} CPUs allowed; "
          f"load average {load0:.2f} -> {os.getloadavg()[0]:.2f}; median of {a.repeat}")
    med = {k: statistics.median(r["seconds"] for r in v) for k, v in res.items()}
    start = {k: statistics.median(r.get("startup", 0.0) for r in v) for k, v in res.items()}
    print("| executor | cores | workers × torch threads | seconds | cluster start (s) | vs local at equal cores |\n"
          "|---|---|---|---|---|---|")
    for (ex, n), s in sorted(med.items(), key=lambda kv: (kv[0][1], executors.index(kv[0][0]))):
        local = med.get(("local", n))
        ratio = f"{s / local:.2f}" if local else ""
        shape = f"1 × {n}" if ex == "local" else f"{n} × 1"
        print(f"| {ex} | {n} | {shape} | {s:.1f} | {start[(ex, n)]:.1f} | {ratio} |")
    if len(counts) > 1:
        for ex in executors:
            if (ex, counts[0]) in med:
                sp = ", ".join(f"{n}: {med[(ex, counts[0])] / med[(ex, n)]:.2f}x" for n in counts if (ex, n) in med)
                print(f"speedup of {ex} from {counts[0]} worker(s): {sp}")


if __name__ == "__main__":
    main()
