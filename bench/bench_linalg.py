"""Time the singular-value paths of opd_dynamics.linalg on Qwen2-0.5B's matrix shapes (CPU or CUDA).

svdvals on the tall orientation vs the wide one (float32, what ``spectrum_method="svd"`` does after transposing
wide inputs), float64 svdvals (``svd64``), and the default float64 Gram + eigvalsh (``gram``). Median of --repeat.

Usage: python bench/bench_linalg.py [--repeat 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from opd_dynamics import linalg

SHAPES = [(896, 896), (896, 4864), (4864, 896), (2048, 2048)]


def _time(fn, repeat: int, device: str) -> float:
    fn()
    out = []
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    print("| shape | svdvals f32 as given | svdvals f32 transposed | svdvals f64 (tall) | gram f64 + eigvalsh |")
    print("|---|---|---|---|---|")
    for m, n in SHAPES:
        x = torch.randn(m, n, device=args.device)
        as_given = _time(lambda: torch.linalg.svdvals(x), args.repeat, args.device)
        transposed = _time(lambda: torch.linalg.svdvals(x.T), args.repeat, args.device)
        f64 = _time(lambda: linalg.singular_values(x, "svd64"), args.repeat, args.device)
        gram = _time(lambda: linalg.singular_values(x, "gram"), args.repeat, args.device)
        print(f"| {m}×{n} | {as_given:.3f} s | {transposed:.3f} s | {f64:.3f} s | {gram:.3f} s |")


if __name__ == "__main__":
    main()
