"""OPD vs RL vs SFT in parameter space on the reference runs: the table in docs/reference-runs.md.

Usage: python bench/reference_geometry.py RESULTS_DIR [RESULTS_DIR ...]   (each written by `analyze -o` on
runs/opd, runs/rl, runs/sft of one seed, with the demo's metric set). Prints one Markdown row per (seed, run).

The direction columns are the subspace similarity of ΔW_t's top-20 left singular subspace with the final update's
(``sim@t``) and subspace locking (top-16 right, ``lock@t``), each with its chance level k/d in brackets.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

import opd_dynamics as od
from opd_dynamics.metrics.sparsity import overall_sparsity
from opd_dynamics.table import BODY_KINDS, load_manifest


def _seed(results: str) -> str:
    """The lab seed of the runs (``summary.json`` of the reference-run layout ``LAB/runs/ARM``)."""
    root = Path(load_manifest(results)["runs"][0]["root"])
    summary = root.parent.parent / "summary.json"
    return str(json.loads(summary.read_text())["seed"]) if summary.exists() else root.parent.parent.name


def rows(results: str) -> list[dict]:
    df = od.load(results)
    seed = _seed(results)
    body = df[df.kind.isin(BODY_KINDS)]
    last = int(body.step.max())
    quarter = min(body.step.unique(), key=lambda s: abs(s - last / 4))
    mean = body.groupby(["run", "step", "metric"]).value.mean()
    sparsity = overall_sparsity(df).set_index(["run", "step"])["sparsity_bf16"]
    out = []
    for run in ("opd", "rl", "sft"):
        m = lambda metric, step=last: float(mean.get((run, step, metric), float("nan")))  # noqa: E731

        def with_chance(metric, step):
            return f"{100 * m(metric, step):.0f}% ({100 * m(metric + '_chance', step):.0f}%)"

        out.append({"seed": seed, "run": run, "‖ΔW‖_F": m("frobenius"), "σ₁/‖ΔW‖_F": m("spectral_ratio"),
                    "eff. rank": m("effective_rank"), "stable rank": m("stable_rank"),
                    "sim@1 (chance)": with_chance("alignment_to_final", 1),
                    f"sim@{quarter} (chance)": with_chance("alignment_to_final", quarter),
                    "lock@1 (chance)": with_chance("subspace_locking", 1),
                    f"lock@{quarter} (chance)": with_chance("subspace_locking", quarter),
                    "bf16 unchanged": float(sparsity.get((run, last))),
                    "max angle (°)": m("principal_angle_left_max"), "low-mag overlap": m("low_magnitude_overlap")})
    return out


def main() -> None:
    table = pd.DataFrame([r for d in sys.argv[1:] for r in rows(d)])
    pct = [c for c in table.columns if c.startswith(("σ₁", "bf16", "low-mag"))]
    for c in table.columns[2:]:
        if pd.api.types.is_numeric_dtype(table[c]):
            table[c] = table[c].map(lambda v: f"{100 * v:.1f}%" if c in pct else f"{v:.3g}")
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "|".join("---" for _ in table.columns) + "|")
    for row in table.itertuples(index=False):
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
