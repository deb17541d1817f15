"""``opd-dynamics effopd replay``: what the EffOPD search would have accepted on a saved plain-OPD run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from opd_dynamics.errors import OPDError

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
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write searches.csv, summary.csv, studies.parquet, replay.json here.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    task_options: Optional[dict] = None,
    tokenizer: Optional[Path] = None,
) -> None:
    """Score the EffOPD candidates at every saved power of two and estimate the steps they would save."""
    from opd_dynamics.effopd.frame import replay_frame
    from opd_dynamics.effopd.replay import replay
    from opd_dynamics.studies._common import prepare
    from opd_dynamics.outdir import write_results

    from opd_dynamics_cli.interventions import claimed

    try:
        k_list = tuple(int(k) for k in ks.split(",") if k.strip())
    except ValueError:
        raise OPDError(f"--ks {ks!r}: expected comma-separated integers", hint="e.g. --ks 1,2,3,4,5") from None
    from opd_dynamics.effopd.extrapolation import extrapolated_names
    from opd_dynamics.presets import resolve

    chosen = resolve("effopd", preset, rule=rule, params=params)
    rule = chosen["rule"]
    if rule not in (">=", ">"):
        raise OPDError(f"--rule {rule!r} not understood", hint="use >= (paper) or > (authors' code)")
    extrapolated_names([], params=chosen["params"])
    with claimed(out):  # -o checked and locked before anything is read
        setup = prepare(run, base=base, task=task, evaluators=[evaluator], seed=seed, device=device,
                        progress=not quiet, task_options=task_options or None, tokenizer=tokenizer)
        opened = setup.runs[0]
        score = setup.build_evaluators(opened)[0]
        report = replay(opened, score, model=setup.engine.model, ks=k_list, rule=rule, params=chosen["params"], device=device,
                        progress=not quiet)
        typer.echo(report.format())
        if out is not None:
            frame = replay_frame(report, run=opened.name, metric=score.name)
            meta = {"tool": "opd-dynamics effopd replay", "run": str(run), "base": str(setup.engine.base.path),
                    "evaluator": evaluator, "task": setup.task_spec.to_json() if setup.task_spec else None,
                    "answer_checking": score.details, "ks": list(k_list), "rule": rule, "params": chosen["params"], "preset": preset, "notes": report.notes}
            write_results(out, {"searches.csv": lambda p: report.searches.to_csv(p, index=False),
                                "summary.csv": lambda p: report.summary.to_csv(p, index=False),
                                "studies.parquet": lambda p: frame.to_parquet(p, index=False),
                                "replay.json": lambda p: p.write_text(json.dumps(meta, indent=2))})
    if out is not None:
        typer.echo(f"wrote {out}/ (searches.csv, summary.csv, studies.parquet, replay.json)", err=True)
