"""OPD vs RL vs SFT in parameter space on the reference runs: the table in docs/reference-runs.md.

Usage: python bench/reference_geometry.py RESULTS_DIR [RESULTS_DIR ...]   (each written by `analyze -o` on
runs/opd, runs/rl, runs/sft of one seed, with the demo's metric set). Prints one Markdown row per (seed, run).
"""
from __future__ import annotations

import sys

import pandas as pd

import opd_dynamics as od
from opd_dynamics.metrics.sparsity import overall_sparsity
from opd_dynamics.table import BODY_KINDS


def rows(results: str) -> list[dict]:
    df = od.load(results)
    seed = od.table.load_manifest(results)["runs"][0]["root"].split("lab-")[-1].split("/")[0]
    body = df[df.kind.isin(BODY_KINDS)]
    last = int(body.step.max())
    quarter = min(body.step.unique(), key=lambda s: abs(s - last / 4))
    mean = body.groupby(["run", "step", "metric"]).value.mean()
    sparsity = overall_sparsity(df).set_index(["run", "step"])["sparsity_bf16"]
    out = []
    for run in ("opd", "rl", "sft"):
        m = lambda metric, step=last: float(mean.get((run, step, metric), float("nan")))  # noqa: E731
        out.append({"seed": seed, "run": run, "‖ΔW‖_F": m("frobenius"), "σ₁/‖ΔW‖_F": m("spectral_ratio"),
                    "eff. rank": m("effective_rank"), "stable rank": m("stable_rank"),
                    f"align@{quarter}": m("alignment_to_final", quarter), f"lock@{quarter}": m("subspace_locking", quarter),
                    "align@1": m("alignment_to_final", 1), "bf16 unchanged": float(sparsity.get((run, last))),
                    "max angle (°)": m("principal_angle_left_max"), "low-mag overlap": m("low_magnitude_overlap")})
    return out


def main() -> None:
    table = pd.DataFrame([r for d in sys.argv[1:] for r in rows(d)])
    pct = [c for c in table.columns if c.startswith(("σ₁", "align", "lock", "bf16", "low-mag"))]
    for c in table.columns[2:]:
        table[c] = table[c].map(lambda v: f"{100 * v:.1f}%" if c in pct else f"{v:.3g}")
    try:
        print(table.to_markdown(index=False))
    except ImportError:  # to_markdown needs tabulate
        print(table.to_string(index=False))


if __name__ == "__main__":
    main()
