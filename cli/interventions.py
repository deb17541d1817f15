"""``opd-dynamics interventions …`` and ``opd-dynamics replay``: thin commands over :mod:`opd_dynamics.studies`.

Each command parses, calls one study function, prints the scores (one line per plan) and writes the results
directory (``-o``) and the figure (``--figure``). Mount with ``app.add_typer(interventions.app, name="interventions")``
and ``app.command("replay")(interventions.replay_cmd)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .lists import comma_list
from .task_options import task_options

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Edit a run's weights module by module (W0 + edited ΔW), score the edited model, restore, repeat. "
                       "Layers are 0-based.")

Run = Annotated[Path, typer.Argument(help="Run directory with checkpoint-N/ inside.")]
Base = Annotated[Optional[Path], typer.Option("--base", "-b", help="W0 directory (default: out/base of a lab layout).")]
Task = Annotated[Optional[str], typer.Option("--task", help="lab:PRESET, a JSONL/CSV/Parquet file (FILE[:SPLIT]) or dataset:PATH_OR_NAME:split (default: detected from a lab layout).")]
Evals = Annotated[Optional[list[str]], typer.Option("--evaluator", "-e", help="Evaluator spec, repeatable: accuracy, accuracy:checker=math, loglik, kl:reference=teacher, accuracy:samples=8,seed=1, … (default accuracy).")]
Teacher = Annotated[Optional[Path], typer.Option("--teacher", help="Reference model for kl:reference=teacher (default: out/teacher of a lab layout).")]
Seed = Annotated[int, typer.Option(help="Seed of the task split and of sampled evaluators' default.")]
Device = Annotated[str, typer.Option(help="cpu, cuda[:i] or auto.")]
Out = Annotated[Optional[Path], typer.Option("--out", "-o", help="Write metrics.parquet + studies.parquet + manifest.json here.")]
Figure = Annotated[Optional[Path], typer.Option("--figure", help="Save the study's figure (PNG/PDF/SVG) here.")]
Metric = Annotated[Optional[str], typer.Option("--metric", help="Evaluator drawn in the figure (default: the first).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, no score listing.")]


def claimed(out: Path | None):
    """Hold ``-o`` (checked writable, locked against a second writer) for the whole command; nothing when absent."""
    from contextlib import nullcontext

    from opd_dynamics.outdir import claim

    return claim(out) if out is not None else nullcontext()


def _run(study: str, runs, *, base, task, evaluators, teacher, seed, device, out, figure, metric, quiet,
         task_options=None, tokenizer=None, **kw) -> None:
    from opd_dynamics.studies import STUDIES

    with claimed(out):  # -o checked and locked before anything is read
        df = STUDIES[study](runs, base=base, task=task, evaluators=evaluators or None, teacher=teacher, seed=seed,
                            device=device, out=out, progress=not quiet, task_options=task_options or None,
                            tokenizer=tokenizer, **{k: v for k, v in kw.items() if v is not None})
    _finish(df, study, out, figure, metric, quiet)


def _finish(df, study, out, figure, metric, quiet) -> None:
    from opd_dynamics.interventions import study_frame

    if not quiet:
        frame = study_frame(df)
        frame["x"] = frame["x"].map(lambda v: "" if v != v else f"{v:g}")  # NaN (references, bars) -> ""
        wide = frame.pivot_table(index=["run", "variant", "x"], columns="metric", values="value", observed=True,
                                 sort=False)
        typer.echo(wide.to_string(float_format=lambda v: f"{v:.4f}"))
    if figure is not None:
        from opd_dynamics.plots.interventions import figure as draw

        draw(df, study, metric=metric).savefig(figure, bbox_inches="tight")
        typer.echo(f"wrote {figure}", err=True)
    if out is not None:
        typer.echo(f"wrote {len(df)} rows to {out}/ (metrics.parquet, studies.parquet, manifest.json)", err=True)


@app.command("sliding-window", epilog="""
**Examples**

    opd-dynamics interventions sliding-window out/lab/runs/opd -e accuracy -o results/sw --figure sw.png

    opd-dynamics interventions sliding-window runs/opd --base models/base --task data.jsonl --h 4 --centres 0,4,8
""")
@task_options
def sliding_window_cmd(run: Run, base: Base = None, task: Task = None, evaluator: Evals = None, teacher: Teacher = None,
                       seed: Seed = 0, device: Device = "cpu", out: Out = None, figure: Figure = None,
                       metric: Metric = None, quiet: Quiet = False,
                       h: Annotated[Optional[int], typer.Option("--h", help="Half-width (default 8, scaled down for models with < 28 layers).")] = None,
                       centres: Annotated[Optional[str], typer.Option(help="0-based window centres (default 0..L-h-1, the paper's 1..L-h).")] = None,
                       families: Annotated[str, typer.Option(help="mlp, attn or mlp,attn.")] = "mlp,attn", task_options: Optional[dict] = None,
        tokenizer: Optional[Path] = None) -> None:
    """W0 + ΔW_T inside a window of layers, MLP-only and attention-only (EffOPD appendix). Layers are 0-based."""
    _run("sliding_window", run, base=base, task=task, evaluators=evaluator, teacher=teacher, seed=seed, device=device,
         out=out, figure=figure, metric=metric, quiet=quiet, h=h, centres=comma_list(centres, "--centres", int),
         families=comma_list(families, "--families"),
         task_options=task_options, tokenizer=tokenizer)


@app.command("norm-scaling", epilog="**Example**\n\n    opd-dynamics interventions norm-scaling out/lab/runs/opd -e loglik --alphas 0,0.25,0.5,0.75,1")
@task_options
def norm_scaling_cmd(run: Run, base: Base = None, task: Task = None, evaluator: Evals = None, teacher: Teacher = None,
                     seed: Seed = 0, device: Device = "cpu", out: Out = None, figure: Figure = None,
                     metric: Metric = None, quiet: Quiet = False,
                     alphas: Annotated[Optional[str], typer.Option(help="α grid (default 0,0.1,…,1).")] = None, task_options: Optional[dict] = None,
        tokenizer: Optional[Path] = None) -> None:
    """W0 + α·ΔW_T for every module, against the global ‖α·ΔW_T‖_F (EffOPD Fig. 1a)."""
    _run("norm_scaling", run, base=base, task=task, evaluators=evaluator, teacher=teacher, seed=seed, device=device,
         out=out, figure=figure, metric=metric, quiet=quiet, alphas=comma_list(alphas, "--alphas", float),
         task_options=task_options, tokenizer=tokenizer)


@app.command("embedding-revert", epilog="**Example**\n\n    opd-dynamics interventions embedding-revert out/lab/runs/opd -e accuracy -e loglik")
@task_options
def embedding_revert_cmd(run: Run, base: Base = None, task: Task = None, evaluator: Evals = None,
                         teacher: Teacher = None, seed: Seed = 0, device: Device = "cpu", out: Out = None,
                         figure: Figure = None, metric: Metric = None, quiet: Quiet = False,
                         include_lm_head: Annotated[bool, typer.Option("--include-lm-head", help="Revert an untied lm_head too.")] = False, task_options: Optional[dict] = None,
        tokenizer: Optional[Path] = None) -> None:
    """The final model with its embeddings put back to W0 (EffOPD Fig. 2a), and W0 with only the final embeddings."""
    _run("embedding_revert", run, base=base, task=task, evaluators=evaluator, teacher=teacher, seed=seed,
         device=device, out=out, figure=figure, metric=metric, quiet=quiet, include_lm_head=include_lm_head,
         task_options=task_options, tokenizer=tokenizer)


@app.command("spectral-partition", epilog="**Examples**\n\n    opd-dynamics interventions spectral-partition out/lab/runs/opd --percents 1,10,50,100 --no-rescale\n\n    opd-dynamics interventions spectral-partition out/lab/runs/opd --preset authors")
@task_options
def spectral_partition_cmd(run: Run, base: Base = None, task: Task = None, evaluator: Evals = None,
                           teacher: Teacher = None, seed: Seed = 0, device: Device = "cpu", out: Out = None,
                           figure: Figure = None, metric: Metric = None, quiet: Quiet = False,
                           percents: Annotated[Optional[str], typer.Option(help="k grid in % of the rank (default 1,5,10,25,50,100).")] = None,
                           rescale: Annotated[bool, typer.Option(help="Also the top-k% rescaled to the full ‖ΔW‖_F.")] = True,
                           rest: Annotated[Optional[str], typer.Option(help="Modules outside attention/MLP: final (keep ΔW_T) or base; default: the preset's.")] = None,
                           ranks: Annotated[Optional[str], typer.Option(help="Keep an absolute number of components instead of a percentage, rescaled (e.g. 1,2,4); default: the preset's.")] = None,
                           preset: Annotated[str, typer.Option(help="paper (percent grid, rest at ΔW_T) or authors (rank 1 rescaled, rest at W0, as the released upd_rank.py); docs/fidelity.md.")] = "paper",
                           task_options: Optional[dict] = None,
        tokenizer: Optional[Path] = None) -> None:
    """Each attention/MLP ΔW_T keeps its top-k% or bottom-k% singular components (EffOPD Fig. 3)."""
    from opd_dynamics.presets import check

    check(preset)
    _run("spectral_partition", run, base=base, task=task, evaluators=evaluator, teacher=teacher, seed=seed,
         device=device, out=out, figure=figure, metric=metric, quiet=quiet,
         percents=comma_list(percents, "--percents", float),
         rescale=rescale, rest=rest, ranks=comma_list(ranks, "--ranks", float), preset=preset,
         task_options=task_options, tokenizer=tokenizer)


@app.command("early-rescale", epilog="**Example**\n\n    opd-dynamics interventions early-rescale out/lab/runs/opd --at 10,25 --betas 0,0.5,0.8,1")
@task_options
def early_rescale_cmd(run: Run, base: Base = None, task: Task = None, evaluator: Evals = None, teacher: Teacher = None,
                      seed: Seed = 0, device: Device = "cpu", out: Out = None, figure: Figure = None,
                      metric: Metric = None, quiet: Quiet = False,
                      at: Annotated[Optional[str], typer.Option("--at", help="Training progress % of the early checkpoints (default 10,25,50).")] = None,
                      betas: Annotated[Optional[str], typer.Option(help="β grid (default 0,0.2,…,1).")] = None, task_options: Optional[dict] = None,
        tokenizer: Optional[Path] = None) -> None:
    """Early checkpoints with each module's ΔW_t rescaled towards ‖ΔW_T‖_F, for each β (EffOPD Fig. 4c)."""
    _run("early_rescale", run, base=base, task=task, evaluators=evaluator, teacher=teacher, seed=seed, device=device,
         out=out, figure=figure, metric=metric, quiet=quiet, at=comma_list(at, "--at", float),
         betas=comma_list(betas, "--betas", float),
         task_options=task_options, tokenizer=tokenizer)


@app.command("subspace-projection", epilog="**Example**\n\n    opd-dynamics interventions subspace-projection out/lab/runs/opd out/lab/runs/sft --at 20% --k 16")
@task_options
def subspace_projection_cmd(runs: Annotated[list[Path], typer.Argument(help="Run directories sharing one W0 (e.g. OPD and SFT).")],
                            base: Base = None, task: Task = None, evaluator: Evals = None, teacher: Teacher = None,
                            seed: Seed = 0, device: Device = "cpu", out: Out = None, figure: Figure = None,
                            metric: Metric = None, quiet: Quiet = False,
                            at: Annotated[str, typer.Option(help="Early checkpoint: p% of training or a step.")] = "20%",
                            k: Annotated[int, typer.Option("--k", help="Subspace dimension K.")] = 16, task_options: Optional[dict] = None,
        tokenizer: Optional[Path] = None) -> None:
    """ΔW_T projected onto the top-K right singular subspace of an early ΔW_t (Geometry of OPD); compare runs."""
    _run("subspace_projection", runs, base=base, task=task, evaluators=evaluator, teacher=teacher, seed=seed,
         device=device, out=out, figure=figure, metric=metric, quiet=quiet, at=at, k=k,
         task_options=task_options, tokenizer=tokenizer)


def replay_cmd(manifest: Annotated[Path, typer.Argument(help="manifest.json written by an interventions command (or its directory).")],
               out: Out = None, device: Annotated[Optional[str], typer.Option(help="Override the recorded device.")] = None,
               atol: Annotated[float, typer.Option(help="Largest accepted |difference| from the recorded scores.")] = 1e-9,
               quiet: Quiet = False) -> None:
    """Rebuild every plan and evaluator a manifest records, score again, and check the numbers match.

    **Example**

        opd-dynamics replay results/sw/manifest.json
    """
    from opd_dynamics.studies import replay

    with claimed(out):
        res = replay(manifest, out=out, device=device, atol=atol, progress=not quiet)
    if res.compared:
        typer.echo(f"replayed {len(res.table)} rows; {res.compared} match the recorded table (max |Δ| = {res.max_abs_diff:.3g})")
    else:
        typer.echo(f"replayed {len(res.table)} rows; no recorded table beside the manifest to compare with")
