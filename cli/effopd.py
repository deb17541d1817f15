"""``opd-dynamics effopd replay``: what the EffOPD search would have accepted on a saved plain-OPD run."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .lists import comma_list
from .task_options import task_options

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="EffOPD extrapolation (W_t + 2k·Δ at t = 2ⁿ): offline replay on saved runs.")


@app.command("replay", epilog="""
**Examples**

    opd-dynamics effopd replay demo-out/lab/runs/opd -o results/effopd

    opd-dynamics effopd replay runs/opd --base models/base --task data.jsonl -e accuracy:split=train,limit=50 --rule ">"

    opd-dynamics effopd replay demo-out/lab/runs/opd --preset authors
""")
@task_options
def replay_cmd(
    run: Annotated[Path, typer.Argument(help="Plain OPD run directory (checkpoint-N/ at every power of two).")],
    base: Annotated[Optional[Path], typer.Option("--base", "-b", help="W0 directory (default: base/ of a lab layout).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="lab:PRESET, a JSONL/CSV/Parquet file or dataset:PATH_OR_NAME:split (default: detected from a lab layout).")] = None,
    evaluator: Annotated[str, typer.Option("--eval", "-e", help="Evaluator spec used as the search's validation score (paper: 50 training examples).")] = "accuracy:split=train,limit=50",
    ks: Annotated[str, typer.Option(help="Candidates k (W_t + 2k·Δ), tried in order.")] = "1,2,3,4,5",
    rule: Annotated[Optional[str], typer.Option(help=">= (paper) or > (authors' code); default: the preset's.")] = None,
    params: Annotated[Optional[str], typer.Option(help="What is extrapolated: weights (paper: attention/MLP matrices), weights+bias, or authors (the released code's name match); default: the preset's.")] = None,
    preset: Annotated[str, typer.Option(help="paper (the paper's text) or authors (the released code: rule >, params authors); docs/fidelity.md.")] = "paper",
    seed: Annotated[int, typer.Option(help="Seed of the task split.")] = 0,
    device: Annotated[str, typer.Option(help="cpu or cuda[:i].")] = "cpu",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write metrics.parquet + manifest.json (the long table), searches.csv, summary.csv, studies.parquet, replay.json here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    task_options: Optional[dict] = None,
    tokenizer: Optional[Path] = None,
) -> None:
    """Score the EffOPD candidates at every saved power of two and estimate the steps they would save."""
    from opd_dynamics.effopd.study import replay_run

    report = replay_run(run, base=base, task=task, evaluator=evaluator, ks=comma_list(ks, "--ks", int) or (),
                        rule=rule, params=params, preset=preset, seed=seed, device=device, out=out, progress=not quiet,
                        task_options=task_options, tokenizer=tokenizer)
    typer.echo(report.format())
    if out is not None:
        typer.echo(f"wrote {out}/ (searches.csv, summary.csv, studies.parquet, replay.json, metrics.parquet, "
                   "manifest.json)", err=True)
