"""The built-in demo: make runs, analyse them, print the comparison. What the README's first command runs."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from .analyze import analyze
from .summary import format_table, table1


def run_demo(out: str | Path = "demo-out", *, small: bool = False, progress: bool = True,
             echo: Callable[[str], None] = print):
    """Build demo runs under ``out``, analyse them into ``out/results`` and print Table 1; return the table."""
    from .synthetic import make_synthetic_runs

    out = Path(out)
    steps = (1, 2, 4, 8) if small else (1, 2, 4, 8, 16, 32)
    paths = make_synthetic_runs(out / "runs", steps=steps, layers=2 if small else 4, hidden=32 if small else 64)
    runs = [paths[k] for k in ("opd", "rl")]
    df = analyze(runs, base=paths["base"], out=out / "results", progress=progress)
    echo("Final step, mean over attention + MLP matrices (synthetic planted runs):")
    echo(format_table(table1(df, final_only=True)))
    echo(f"results: {out / 'results'} (open with opd_dynamics.load)")
    return df
