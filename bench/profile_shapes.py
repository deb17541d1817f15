"""Where `analyze`'s time goes, per shape class of a Qwen2-0.5B-shaped model, against one float32 `svdvals`.

For each shape (q/o 896×896, k/v 128×896, gate/up 4864×896, down 896×4864, the 151936×896 embedding) it times,
on a random bf16 W₀ and W_t = W₀ + low-rank + noise, every stage the engine runs for one (module, step):

- diff:      ΔW = W_t − W₀ in float32 (blockwise upcast)
- gram:      the float64 Gram on the small side, with each BLAS backend (`torch`, `numpy`)
- eigvalsh:  its eigenvalues, with each backend
- topk:      the top-32 vectors by subspace iteration on the Gram, plus the other side's vectors (U = X V Σ⁻¹)
- floor:     `torch.linalg.svdvals` of ΔW in float32 on the tall orientation (what the bench's floor counts)

and prints one table, the CPU model, the BLAS libraries, the thread count and the load average, so a figure is never
quoted without its machine. The backend `auto` would choose is printed last (see `opd_dynamics.linalg.backend`).

Usage: python bench/profile_shapes.py [--repeat 3] [--threads N] [--embed-rows 151936]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from opd_dynamics import linalg
from opd_dynamics.machine import describe


def _best(fn, repeat: int) -> float:
    fn()  # warm-up: first-touch allocations and BLAS thread start-up stay out of the figure
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def profile(shape: tuple[int, int], repeat: int) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    m, n = shape
    w0 = (0.02 * torch.randn(m, n, generator=gen)).to(torch.bfloat16)
    wt = (w0.float() + 1e-3 * torch.randn(m, n, generator=gen)
          + 2e-3 * torch.randn(m, 4, generator=gen) @ torch.randn(4, n, generator=gen)).to(torch.bfloat16)
    out = {"diff": _best(lambda: linalg.difference(wt, w0), repeat)}
    d = linalg.difference(wt, w0)
    for be in linalg.BACKENDS:
        g, side = linalg.gram(d, backend=be)
        out[f"gram[{be}]"] = _best(lambda: linalg.gram(d, backend=be), repeat)
        out[f"eigvalsh[{be}]"] = _best(lambda: linalg.eigh_spectrum(g, backend=be), repeat)

        def topk():
            vec, sig = linalg.gram_top_vectors(g, 32, backend=be)
            return linalg.other_side(d, vec, sig, side, backend=be)

        out[f"topk[{be}]"] = _best(topk, repeat)
    tall = d if m >= n else d.T
    out["floor"] = _best(lambda: torch.linalg.svdvals(tall), max(1, repeat if m * n < 2e7 else 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--embed-rows", type=int, default=151936)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    shapes = {"q/o": (896, 896), "k/v": (128, 896), "gate/up": (4864, 896), "down": (896, 4864),
              "embed": (a.embed_rows, 896)}
    print("#", describe())
    rows = {name: profile(s, a.repeat) for name, s in shapes.items()}
    cols = list(next(iter(rows.values())))
    print("| shape | " + " | ".join(cols) + " | exact σ+top-32 / floor, per backend |")
    print("|---" * (len(cols) + 2) + "|")
    for name, r in rows.items():
        ratios = ", ".join(f"{be} {(r['diff'] + r[f'gram[{be}]'] + r[f'eigvalsh[{be}]'] + r[f'topk[{be}]']) / (r['floor'] + r['diff']):.2f}"
                           for be in linalg.BACKENDS)
        print(f"| {name} {shapes[name][0]}×{shapes[name][1]} | " + " | ".join(f"{r[c]:.3f}" for c in cols)
              + f" | {ratios} |")
    print(f"\nbackend chosen by `auto` on this machine: {linalg.backend()}")


if __name__ == "__main__":
    main()
