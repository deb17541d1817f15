"""The built-in demo: train the reference runs, analyse them, print the comparison, write the report.

What the README's first command runs. ``preset="default"`` takes a few minutes on 2 CPU cores (teacher and W₀
are cached under ``out/lab`` so a second call reuses them); ``small`` about a minute; ``tiny`` seconds (its
models learn little: for tests).

**The same numbers on every machine.** Training is chaotic: the last bits of a matmul decide which token a rollout
samples, and a thousand sampled steps later the accuracies differ by tens of points. Those bits depend on the CPU,
because torch picks its kernels by instruction set (ATen's AVX2 / AVX-512 kernels, MKL's per-CPU code paths). The
CLI's ``opd-dynamics demo`` therefore runs in a child process with :data:`PORTABLE_ENV`, one kernel path for every
x86-64 CPU (``--native-kernels`` opts out: faster, machine-dependent). ``run_demo`` itself uses whatever the process
was started with and prints which (docs/reference-runs.md#reproducibility).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .analyze import analyze
from .metrics.registry import DEFAULT_METRICS
from .summary import format_table, table1

DEMO_METRICS = DEFAULT_METRICS + ("subspace_locking", "sparsity_bf16", "principal_angles", "spectral_shift",
                                  "low_magnitude_overlap")
ARMS = ("opd", "rl", "sft")
#: Environment that pins torch's CPU kernels to one path on every x86-64 machine: ATen's scalar kernels and MKL's
#: conditional-numerical-reproducibility mode. Both are read when torch starts, so they are set for a new process.
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


def portable_kernels() -> bool:
    """Whether this process runs with :data:`PORTABLE_ENV` (set before torch started)."""
    return all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())


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
    kernels = ("portable (ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE)" if portable_kernels() else
               "native (this CPU's instruction set: numbers differ between machines)")
    echo(f"Reference runs ({preset} preset, seed {seed}; CPU kernels: {kernels}): validation accuracy")
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
    echo(format_table(wide[keep], df))
    early = table1(df)
    first = early.groupby("run").step.transform("min") == early.step
    if "alignment_to_final" in early:
        echo("")
        chance = early.get("alignment_to_final_chance")
        echo("Subspace similarity of the first checkpoint's update with the final one (top-20 left singular "
             "subspaces; a random subspace scores k/d): " +
             ", ".join(f"{r.run} {_pct(r.alignment_to_final)}"
                       + (f" (chance {_pct(chance[i])})" if chance is not None else "")
                       for i, r in zip(early[first].index, early[first].itertuples())) +
             f" (step {int(early[first].step.min())})")
    echo(f"\nresults: {out / 'results'}   runs: {out / 'lab'}   wall seconds: {summary.get('wall_seconds', {})}")
    if report:
        from .report import build_report

        index = build_report([out / "results"], out / "report", title=f"opd-dynamics demo ({preset} preset)")
        echo(f"report: {index}")
    return df
