"""Where signal_rank recovers a planted rank, and where no spectral method can: docs/figures/signal_rank_boundary.png.

Planted θ·U Vᵀ (rank r, all r strengths equal) plus i.i.d. N(0, σ²) noise on a 96×192 matrix; θ in units of the BBP
threshold σ(mn)^{1/4}. Left: mean signal_rank / r; right: share of seeds with signal_rank == r exactly.
Usage: python bench/signal_rank_boundary.py [FIGURE] [SEEDS]
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from opd_dynamics.metrics.registry import Spec
from opd_dynamics.plots._style import figure
from opd_dynamics.view import ModuleView
from opd_dynamics.naming import Part

import torch

SHAPE, SIGMA = (96, 192), 1e-2
RANKS = (1, 2, 4, 8)
CS = (0.3, 0.5, 0.7, 0.9, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0)


def signal_rank(d: np.ndarray) -> int:
    part = Part("m", "m", 0, "mlp_up")
    view = ModuleView("r", part, 1, 0, torch.tensor(d, dtype=torch.float32), torch.zeros(d.shape), None)
    return int(Spec("signal_rank").build()(view)["signal_rank"])


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/figures/signal_rank_boundary.png")
    seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    m, n = SHAPE
    mean, exact = {}, {}
    for r in RANKS:
        for c in CS:
            got = []
            for s in range(seeds):
                rng = np.random.default_rng(s)
                u = np.linalg.qr(rng.standard_normal((m, r)))[0]
                v = np.linalg.qr(rng.standard_normal((n, r)))[0]
                d = c * SIGMA * (m * n) ** 0.25 * u @ v.T + SIGMA * rng.standard_normal((m, n))
                got.append(signal_rank(d))
            mean[r, c], exact[r, c] = np.mean(got) / r, np.mean(np.array(got) == r)
            print(f"r={r} θ/BBP={c}: {got}")
    fig, axes = figure(1, 2, width=9.5, height=3.4)
    for ax, data, title in ((axes[0, 0], mean, "mean signal_rank / planted rank"),
                            (axes[0, 1], exact, "share of seeds recovered exactly")):
        for r, color in zip(RANKS, ("#0072B2", "#E69F00", "#009E73", "#D55E00")):
            ax.plot(CS, [data[r, c] for c in CS], marker="o", color=color, label=f"rank {r}")
        ax.axvline(1.0, color="#777777", ls=":", lw=1)
        ax.text(0.97, 0.75, "BBP threshold\nσ(mn)^¼", fontsize=8, color="#555555", ha="right",
                transform=ax.get_xaxis_transform())
        ax.axvline(3.0, color="#333333", ls="--", lw=1)
        ax.text(3.05, 0.6, "exact in the\ntests from here", fontsize=8, color="#333333", transform=ax.get_xaxis_transform())
        ax.set_xlabel("planted strength θ / (σ (mn)^¼)")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.05, 1.15)
        ax.legend(fontsize=8, loc="lower right")
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    fig.suptitle(f"signal_rank on planted rank + i.i.d. noise, {m}×{n}, {seeds} seeds per point", fontsize=10)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}; load: {load}")


if __name__ == "__main__":
    main()
