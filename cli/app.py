"""``opd-dynamics``: thin typer commands over the public API. Parse, call one function, print or write.

User errors (:class:`opd_dynamics.errors.OPDError`) print one line on stderr and exit with status 2;
warnings print as one ``warning:`` line each.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from opd_dynamics.errors import OPDError

from .lists import comma_list

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="See how post-training moves LLM weights: update geometry, subspace locking, "
                       "interventions and EffOPD extrapolation.")

BASE_HELP = "Model training started from (W0). Trainers never save it: pass it unless a step-0 checkpoint exists."


@app.command(epilog="""
**Examples**

    opd-dynamics analyze runs/opd --base models/qwen-0.5b -o results/opd

    opd-dynamics analyze runs/opd runs/rl runs/sft --base models/base -o results/all --select kind=body

    opd-dynamics analyze runs/opd --base B --metrics spectral_ratio,alignment_to_final:k=10,side=right --against prev

    opd-dynamics analyze runs/live --base B -o results/live --watch --report report/live --until-step 1000

    opd-dynamics analyze s3://bucket/runs/opd --base s3://bucket/models/base --storage-option endpoint_url=http://127.0.0.1:9000

    opd-dynamics analyze "hf://org/model@step-*" --base hf://org/model@step-0

    opd-dynamics analyze runs/opd --base B -m top1pct_ratio,hill_alpha,frobenius,spectral_ratio --preset authors

A re-run with the same -o computes only what is new (new checkpoints, new metrics, rewritten checkpoints);
--no-cache recomputes everything. A checkpoint still being written is left out with a warning and the exit
status is 3 (0: everything analysed; 2: an error). --watch follows a live run until Ctrl-C or --until-step.
""")
def analyze(
    runs: Annotated[list[str], typer.Argument(help="Run directories (checkpoint-N/, global_step_N/, step_N/) or single checkpoints; or URLs: s3://, gs://, az://, hf://org/repo@rev (a pattern or list of revisions is a run).")],
    base: Annotated[Optional[list[str]], typer.Option("--base", "-b", help=BASE_HELP + " Once for all runs or once per run; a path or a URL.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write metrics.parquet + manifest.json here.")] = None,
    name: Annotated[Optional[list[str]], typer.Option("--name", help="Label for each run (default: directory name).")] = None,
    metrics: Annotated[Optional[list[str]], typer.Option("--metrics", "--metric", "-m", help="Metric specs NAME[:KEY=VALUE,...], comma-separated and/or repeated: an item with '=' and no ':' continues the spec before it, e.g. -m spectral_norm,alignment_to_final:k=10,side=right -m alignment_to_final:mode=subspace (see list-metrics; docs/metrics.md).")] = None,
    select: Annotated[Optional[list[str]], typer.Option("--select", "-s", help="kind=attn_q,mlp_* | layer=0-11 | name=REGEX | matrix; repeat to combine.")] = None,
    against: Annotated[str, typer.Option(help="base (W_t - W0), prev (W_t - W_t') or a step number.")] = "base",
    steps: Annotated[Optional[str], typer.Option(help="Only these steps, e.g. 1,2,4,8.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda[:i].")] = "auto",
    spectrum: Annotated[str, typer.Option(help="gram (float64 Gram + eigvalsh), svd (float32) or svd64.")] = "gram",
    allow_pickle: Annotated[bool, typer.Option("--allow-pickle", help="Also read pytorch_model.bin (weights_only=True).")] = False,
    nonfinite: Annotated[str, typer.Option(help="error: stop at NaN/Inf weights; nan: record NaN rows with a warning.")] = "error",
    lora_scaling: Annotated[Optional[float], typer.Option("--lora-scaling", help="LoRA runs: s in dW = s*B*A, overriding adapter_config.json (alpha/r).")] = None,
    ds_weights: Annotated[str, typer.Option("--ds-weights", help="DeepSpeed ZeRO runs: fp32 (the optimizer's master weights) or module (the 16-bit copy, which rounds small updates away).")] = "fp32",
    csv: Annotated[bool, typer.Option("--csv", help="Also write metrics.csv.")] = False,
    storage_option: Annotated[Optional[list[str]], typer.Option("--storage-option", help="key=value for the fsspec backend of URL inputs (endpoint_url=..., anon=true, client_kwargs={json}); repeatable.")] = None,
    remote_cache_dir: Annotated[Optional[str], typer.Option("--remote-cache-dir", help="Cache of remote headers, keyed by URL + ETag (default ~/.cache/opd-dynamics).")] = None,
    no_remote_cache: Annotated[bool, typer.Option("--no-remote-cache", help="Cache nothing read from remote storage.")] = False,
    remote_cache_tensors: Annotated[bool, typer.Option("--remote-cache-tensors", help="Also cache remote tensor bytes (a re-run reads only listings).")] = False,
    retries: Annotated[int, typer.Option(help="Retries of a failed remote request (exponential backoff).")] = 3,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, no summary.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Recompute every cell instead of reusing the ones kept in -o DIR/cache/.")] = False,
    watch: Annotated[bool, typer.Option("--watch", help="Follow a live run: analyse each checkpoint once it is complete (needs -o).")] = False,
    until_step: Annotated[Optional[int], typer.Option("--until-step", help="--watch: stop once a step >= this is analysed.")] = None,
    interval: Annotated[float, typer.Option(help="--watch: seconds between looks (a checkpoint is ready when its file sizes held over one).")] = 5.0,
    report_dir: Annotated[Optional[Path], typer.Option("--report", help="Also (re)write the HTML report here after each analysis.")] = None,
    preset: Annotated[str, typer.Option(help="paper (the papers' text) or authors (the released code: top-1 % with floor(0.01 r), Hill alpha on sigma^2, standardised rank-1 PCA, Table 1 as a ratio of sums); docs/fidelity.md.")] = "paper",
    executor: Annotated[str, typer.Option(help="local, processes[:N] (N worker processes; one per GPU with --device cuda) or ray[:ADDRESS] (auto, ray://host:port; options ,num_cpus=1,num_gpus=0.25). Same table from each.")] = "local",
) -> None:
    """Compute update-geometry metrics for every module at every saved step; print the Table-1 summary."""
    from opd_dynamics import analyze as run_analyze
    from opd_dynamics.metrics.registry import Spec
    from opd_dynamics.io.storage import StorageConfig, parse_options
    from opd_dynamics.summary import format_table, table1

    from opd_dynamics.presets import check

    check(preset)
    specs = [Spec.parse(m) for text in metrics for m in _split_specs(text)] if metrics else None
    storage = StorageConfig(options=parse_options(storage_option), retries=retries, cache_tensors=remote_cache_tensors,
                            cache_dir=False if no_remote_cache else remote_cache_dir)

    def once(only_steps, progress):
        df = run_analyze(runs, base=_one_or_many(base), names=name, metrics=specs, select=select,
                         against=_against(against), steps=only_steps, device=device, spectrum_method=spectrum,
                         allow_pickle=allow_pickle, nonfinite=nonfinite, lora_scaling=lora_scaling, ds_weights=ds_weights,
                         out=out, csv=csv, progress=progress, cache=not no_cache, storage=storage, executor=executor,
                         preset=preset)
        if report_dir is not None:
            from opd_dynamics.report import build_report

            build_report([out] if out is not None else [], report_dir)
        return df

    from opd_dynamics_cli.interventions import claimed

    with claimed(out), claimed(report_dir):  # -o and --report checked and locked before anything is read
        if watch:
            from opd_dynamics.live import follow

            if out is None or len(runs) != 1:
                raise OPDError("--watch follows one run into one results directory",
                               hint="opd-dynamics analyze RUN_DIR --base BASE -o RESULTS --watch")
            if "://" in runs[0] and not runs[0].startswith("file://"):
                raise OPDError(f"--watch follows a run on local disk, not {runs[0]}",
                               hint="re-run analyze with the same -o: only new checkpoints are computed")
            follow(runs[0], lambda ready: once(ready, False), interval=interval, until_step=until_step,
                   echo=lambda m: typer.echo(m, err=True))
            return
        if report_dir is not None and out is None:
            raise OPDError("--report needs -o DIR (the report is drawn from the written table)", hint="add -o results/")
        df = once(comma_list(steps, "--steps", int), not quiet)
        if not quiet:
            wide = table1(df, preset=preset)
            if len(wide):
                typer.echo("Mean over attention + MLP matrices (EffOPD Table 1 layout):")
                typer.echo(format_table(wide, df))
            if out is not None:
                typer.echo(f"wrote {len(df)} rows to {out}/metrics.parquet (+ manifest.json)", err=True)
        if df.attrs.get("skipped"):
            from opd_dynamics.live import EXIT_SKIPPED

            raise typer.Exit(EXIT_SKIPPED)


@app.command("list-metrics", epilog="**Example**\n\n    opd-dynamics list-metrics")
def list_metrics() -> None:
    """List every metric (built-in and plug-in) with its family, defaults and source."""
    from opd_dynamics.metrics.registry import available

    for name, info in available().items():
        defaults = ", ".join(f"{k}={v}" for k, v in info.defaults.items())
        typer.echo(f"{name:22s} {info.family:10s} {info.summary}" + (f"  [{defaults}]" if defaults else "")
                   + (f"  ({info.paper})" if info.paper else ""))


@app.command(epilog="**Example**\n\n    opd-dynamics show results/opd")
def show(results: Annotated[Path, typer.Argument(help="Directory written by analyze -o (or a .parquet/.csv file).")],
         final: Annotated[bool, typer.Option("--final", help="Only each run's last step.")] = False,
         preset: Annotated[Optional[str], typer.Option(help="paper (a mean of per-module ratios) or authors (the shares of the Frobenius norm as a ratio of sums); default: the preset analyze recorded in manifest.json, else paper; docs/fidelity.md.")] = None) -> None:
    """Print the Table-1 summary of saved results."""
    from opd_dynamics.presets import check, recorded
    from opd_dynamics.summary import format_table, table1
    from opd_dynamics.table import load

    if preset is not None:
        check(preset)
    df = load(results)
    preset = preset or recorded(results)
    typer.echo(format_table(table1(df, final_only=final, preset=preset), df))


@app.command(epilog="""
**Examples**

    opd-dynamics report results/all -o report/

    opd-dynamics report results/opd results/rl results/sft studies/ -o report/ --title "OPD vs RL vs SFT"
""")
def report(results: Annotated[list[str], typer.Argument(help="Directories written by analyze -o, and study frames (Parquet/CSV) or directories holding them; paths or URLs (s3://...).")],
           out: Annotated[Path, typer.Option("--out", "-o", help="Report directory (index.html, figures/, tables/); an earlier report there is replaced.")] = Path("report"),
           title: Annotated[str, typer.Option(help="Page title.")] = "opd-dynamics report",
           formats: Annotated[str, typer.Option("--formats", help="Figure files besides the embedded PNG: png,pdf,svg.")] = "png,pdf",
           storage_option: Annotated[Optional[list[str]], typer.Option("--storage-option", help="key=value for the fsspec backend of URL inputs; repeatable.")] = None) -> None:
    """Build a self-contained HTML report (plus PNG/PDF figures, CSV/LaTeX tables) comparing runs side by side."""
    from opd_dynamics.io.storage import parse_options
    from opd_dynamics.report import build_report

    index = build_report(results, out, title=title, formats=comma_list(formats, "--formats") or [],
                         storage=parse_options(storage_option))
    typer.echo(f"wrote {index}")


@app.command(epilog="**Examples**\n\n    opd-dynamics demo\n\n    opd-dynamics demo demo-out --small")
def demo(out: Annotated[Path, typer.Argument(help="Where to write the runs, results and report.")] = Path("demo-out"),
         preset: Annotated[str, typer.Option(help="default (a few minutes on 2 cores), small (~1 min) or tiny (seconds; learns little).")] = "default",
         small: Annotated[bool, typer.Option("--small", help="Same as --preset small.")] = False,
         seed: Annotated[int, typer.Option(help="Seed of the task, the models and the runs.")] = 0,
         report: Annotated[bool, typer.Option(help="Also write the HTML report (out/report/index.html).")] = True,
         portable: Annotated[bool, typer.Option(
             "--portable-kernels/--native-kernels",
             help="One CPU kernel path on every x86-64 machine, so the printed numbers match the README "
                  "(--native-kernels: faster, differs between CPUs).")] = True,
         quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:
    """Train the built-in reference runs (teacher, W0, OPD / RL / SFT), analyse them and print the comparison."""
    import os
    import subprocess

    from opd_dynamics.demo import PORTABLE_ENV, portable_kernels, run_demo
    from opd_dynamics.lab.presets import PRESETS

    preset = "small" if small else preset
    if preset not in PRESETS:
        raise OPDError(f"--preset {preset!r} unknown", hint=f"use one of {', '.join(PRESETS)}")
    if portable and not portable_kernels():  # torch reads these when it starts: run the demo in a child that has them
        argv = [sys.executable, "-m", "opd_dynamics_cli.app", "demo", str(out), "--preset", preset, "--seed", str(seed),
                "--report" if report else "--no-report", *(["-q"] if quiet else [])]
        raise typer.Exit(subprocess.run(argv, env={**os.environ, **PORTABLE_ENV}).returncode)
    run_demo(out, preset=preset, seed=seed, report=report, progress=not quiet, echo=typer.echo)


def _mount_subcommands() -> None:
    from opd_dynamics_cli import interventions

    app.add_typer(interventions.app, name="interventions",
                  help="Edit-and-score studies: sliding windows, norm scaling, spectral partitions, …")
    from opd_dynamics_cli import effopd

    app.add_typer(effopd.app, name="effopd", help="EffOPD extrapolation: offline replay on saved runs.")
    app.command("replay", epilog="**Example**\n\n    opd-dynamics replay studies/sliding/manifest.json")(
        interventions.replay_cmd)
    from opd_dynamics_cli import consistency

    app.command("mask-consistency", epilog=consistency.EPILOG)(consistency.mask_consistency_cmd)


_mount_subcommands()


def _split_specs(text: str) -> list[str]:
    """Split one ``--metrics`` value into specs (grammar in docs/metrics.md).

    ``LIST := SPEC ("," SPEC)*``, ``SPEC := NAME [":" KEY "=" VALUE ("," KEY "=" VALUE)*]``: an item holding '=' but
    no ':' continues the settings of the spec before it, any other item starts a new spec, so ``a,b:k=1,side=left,c``
    is three specs. A value cannot hold ','; repeat ``-m`` to give specs one by one.
    """
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if "=" in piece and ":" not in piece:
            if not out or ":" not in out[-1]:
                after = f"after {out[-1]!r}" if out else "first"
                raise OPDError(f"--metrics {text!r}: setting {piece!r} comes {after}, not after NAME:",
                               hint=f"write NAME:{piece} (e.g. {out[-1] if out else 'alignment_to_final'}:{piece})")
            out[-1] += "," + piece
        else:
            out.append(piece)
    return out


def _against(text: str):
    return int(text) if text.isdigit() else text


def _one_or_many(paths: list[Path] | None):
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else list(paths)


def _warning_line(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def _fail(message: str) -> None:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(2)


def main() -> None:
    """Run the app; every user error ends as one ``error:`` line on stderr and exit status 2 (no traceback)."""
    import importlib

    cx = importlib.import_module(typer.BadParameter.__module__)  # click's exceptions (typer may vendor click)
    no_args = getattr(cx, "NoArgsIsHelpError", ())
    warnings.formatwarning = _warning_line
    try:
        code = app(standalone_mode=False, prog_name="opd-dynamics")
    except OPDError as e:
        _fail(str(e))
    except no_args as e:
        typer.echo(e.ctx.get_help() if e.ctx else "", err=True)
        sys.exit(2)
    except cx.UsageError as e:  # a mistyped option, a missing argument, a value of the wrong type
        cmd = e.ctx.command_path if e.ctx else "opd-dynamics"
        _fail(f"{e.format_message()} (fix: see `{cmd} --help`)")
    except cx.ClickException as e:  # e.g. a FileError
        _fail(e.format_message())
    except (cx.Abort, KeyboardInterrupt):  # Ctrl-C: clean-up has run (outputs are left as they were)
        typer.echo("error: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
