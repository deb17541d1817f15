"""signal_rank on the reference runs: the OPD / RL / SFT table in docs/reference-runs.md and docs/metrics.md.

Usage: python bench/reference_signal.py RESULTS_DIR [RESULTS_DIR ...]   (each written by
`analyze runs/opd runs/rl runs/sft --base base -m signal_rank -m signal_rank:floor=mp -m effective_rank
--select kind=body -o RESULTS_DIR`). Prints one Markdown row per (results dir, run, step): means over the
attention + MLP matrices.
"""
from __future__ import annotations

import sys

import opd_dynamics as od
from opd_dynamics.table import BODY_KINDS


def main() -> None:
    cols = ["results", "run", "step", "eff. rank (full)", "signal rank", "signal rank (MP edge only)",
            "eff. rank of signal", "bf16 edge > MP edge", "min(m, n)"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for results in sys.argv[1:]:
        df = od.load(results)
        body = df[df.kind.isin(BODY_KINDS)]
        wide = body.pivot_table(index=["run", "step", "module"], columns="metric", values="value")
        wide["bf16_wins"] = wide.noise_edge_bf16 > wide.noise_edge_mp
        g = wide.groupby(level=["run", "step"]).mean()
        for (run, step), r in g.iterrows():
            cells = [results.rstrip("/").split("/")[-1], run, step, f"{r.effective_rank:.1f}", f"{r.signal_rank:.1f}",
                     f"{r['signal_rank[floor=mp]']:.1f}", f"{r.signal_effective_rank:.1f}",
                     f"{100 * r.bf16_wins:.0f}%", f"{r.min_dim:.0f}"]
            print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
