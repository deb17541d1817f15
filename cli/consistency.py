"""``opd-dynamics mask-consistency``: do two runs from one W₀ update the same entries (with chance levels)?"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

EPILOG = """
**Examples**

    opd-dynamics mask-consistency runs/opd-seed0 runs/opd-seed1 --base models/base -o results/opd-seeds

    opd-dynamics mask-consistency runs/opd runs/rl --base B --mask bf16 --select kind=body

Prints, per step, the Jaccard of the two runs' update masks pooled over the selected matrices beside what
independent masks of the same sizes give (chance); -o writes the per-module long table (run = A~B).
"""


def mask_consistency_cmd(
    run_a: Annotated[str, typer.Argument(help="First run directory.")],
    run_b: Annotated[str, typer.Argument(help="Second run directory (same base model).")],
    base: Annotated[Optional[list[str]], typer.Option("--base", "-b", help="W0: once for both runs, or once per run (the tensors must be equal).")] = None,
    mask: Annotated[str, typer.Option(help="top:Q (top-Q share of |dW| per matrix, default top:0.01) or bf16 (entries whose bf16 value changed).")] = "top:0.01",
    select: Annotated[Optional[list[str]], typer.Option("--select", "-s", help="kind=attn_q,mlp_* | layer=0-11 | name=REGEX; repeat to combine.")] = None,
    steps: Annotated[Optional[str], typer.Option(help="Only these steps (default: every step both runs saved), e.g. 8,64.")] = None,
    name: Annotated[Optional[list[str]], typer.Option("--name", help="Labels for the two runs.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write metrics.parquet + manifest.json here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary.")] = False,
) -> None:
    """Overlap of two runs' update masks per module and step (Path Not Taken's cross-run consistency), with chance."""
    from opd_dynamics.consistency import mask_consistency, overall
    from opd_dynamics_cli.app import _one_or_many
    from opd_dynamics_cli.lists import comma_list

    df = mask_consistency(run_a, run_b, base=_one_or_many(base), names=name, mask=mask, select=select,
                          steps=comma_list(steps, "--steps", int), out=out, progress=not quiet)
    if not quiet:
        summary = overall(df)
        typer.echo(f"mask {mask}: Jaccard pooled over {df.module.nunique()} matrices (chance: independent masks "
                   "of the same sizes)")
        typer.echo(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        if out is not None:
            typer.echo(f"wrote {len(df)} rows to {out}/metrics.parquet (+ manifest.json)", err=True)
