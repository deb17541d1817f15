"""The built-in demo: train the reference runs, analyse them, print the comparison, write the report.

What the README's first command runs. ``preset="default"`` takes a few minutes on 2 CPU cores (teacher and W₀
are cached under ``out/lab`` so a second call reuses them); ``small`` about a minute; ``tiny`` seconds (its
models learn little: for tests).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .analyze import analyze
from .metrics.registry import DEFAULT_METRICS
from .summary import format_table, table1

DEMO_METRICS = DEFAULT_METRICS + ("subspace_locking", "sparsity_bf16", "principal_angles", "spectral_shift",
                                  "low_magnitude_overlap")
ARMS = ("opd", "rl", "sft")


def _pct(v: float) -> str:
    return "— (no update)" if v != v else f"{100 * v:.0f}%"


def run_demo(out: str | Path = "demo-out", *, preset: str = "default", seed: int = 0, report: bool = True,
             progress: bool = True, echo: Callable[[str], None] = print):
    """Build the reference runs under ``out/lab``, analyse them into ``out/results``, report into ``out/report``."""
    from .lab import build_reference_runs
    from .outdir import check_out

    out = Path(out)
    check_out(out / "results")  # before minutes of training: a file in the way, a read-only place
    if report:
        check_out(out / "report")
    refs = build_reference_runs(out / "lab", preset=preset, seed=seed, progress=progress)
    df = analyze([refs.runs[a] for a in ARMS], base=refs.base, metrics=list(DEMO_METRICS), out=out / "results",
                 progress=progress)
    summary = json.loads(refs.summary.read_text())
    echo(f"Reference runs ({preset} preset, seed {seed}): validation accuracy")
    echo(f"  teacher {refs.accuracy['teacher']:.3f}   W0 {refs.accuracy['base']:.3f}   " + "   ".join(
        f"{a.upper()} {refs.accuracy[a]:.3f}" for a in ARMS))
    gaps = {a: g for a, g in refs.gap_recovery.items() if g is not None}
    if gaps:
        echo("  teacher-student gap closed: " + "   ".join(f"{a.upper()} {100 * g:.0f}%" for a, g in gaps.items()))
    echo("")
    echo("Final checkpoint, mean over attention + MLP matrices (EffOPD Table 1 layout; sparsity: share of bf16 "
         "entries unchanged):")
    wide = table1(df, final_only=True)
    keep = [c for c in ("run", "step", "spectral_norm", "spectral_ratio", "effective_rank", "top1pct_ratio",
                        "stable_rank", "sparsity_bf16") if c in wide.columns]  # alignment is 1 at the final step
    echo(format_table(wide[keep]))
    early = table1(df)
    first = early.groupby("run").step.transform("min") == early.step
    if "alignment_to_final" in early:
        echo("")
        echo("Alignment of the first checkpoint's update with the final one (top-20 left singular vectors): " +
             ", ".join(f"{r.run} {_pct(r.alignment_to_final)}" for r in early[first].itertuples()) +
             f" (step {int(early[first].step.min())})")
    echo(f"\nresults: {out / 'results'}   runs: {out / 'lab'}   wall seconds: {summary.get('wall_seconds', {})}")
    if report:
        from .report import build_report

        index = build_report([out / "results"], out / "report", title=f"opd-dynamics demo ({preset} preset)")
        echo(f"report: {index}")
    return df
