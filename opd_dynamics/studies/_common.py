"""What every study shares: open the runs against one engine, build evaluators per run, execute plans, write
the table + manifest, and replay a manifest.

The manifest (``manifest.json`` beside ``metrics.parquet``) records the base, each run's root and steps, every plan
as JSON, the evaluator specs, the task spec and the seed, so :func:`replay` rebuilds and re-scores exactly the same
edited models.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .. import provenance
from ..errors import OPDError, read_json
from ..evaluators import EvalContext, EvalSpec, TaskSpec
from ..evaluators.tasks import detect
from ..interventions import InterventionEngine, study_frame
from ..io.discovery import Run
from ..plans import PLAN_PREFIX, Plan, Rule
from ..edits import EditSpec
from ..outdir import write_results
from ..table import MANIFEST_NAME, from_rows, load, table_files

PathLike = str | os.PathLike
TOOL = "opd-dynamics interventions"
DEFAULT_EVALUATORS = ("accuracy",)


@dataclass
class Setup:
    """An engine holding W₀, the runs it edits, the task and the evaluator specs."""

    engine: InterventionEngine
    runs: list[Run]
    task_spec: TaskSpec | None
    task: Any
    evaluators: list[EvalSpec]
    teacher: Path | None
    seed: int
    progress: bool

    def build_evaluators(self, run: Run) -> list:
        refs = {"final": run.steps[run.final_step].path}
        if self.teacher is not None:
            refs["teacher"] = self.teacher
        ctx = EvalContext(self.task, self.engine.tokenizer, refs, self.progress)
        return [s.build(ctx) for s in self.evaluators]


def _lab_dir(root: Path, name: str) -> Path | None:
    """``out/<name>`` of a lab reference-run layout (``out/runs/ARM``), when it exists."""
    cand = Path(root).resolve().parent.parent / name
    return cand if (cand / "config.json").exists() else None


def prepare(runs: PathLike | Sequence[PathLike], *, base: PathLike | None = None, names: Sequence[str] | None = None,
            task: str | TaskSpec | Any | None = None, evaluators: Sequence[str | EvalSpec] | None = None,
            teacher: PathLike | None = None, seed: int = 0, device: str = "cpu", dtype: str = "auto",
            engine: InterventionEngine | None = None, progress: bool = True,
            task_options: dict[str, Any] | None = None, tokenizer: PathLike | None = None) -> Setup:
    """Open runs, load W₀ once (or reuse ``engine``), resolve task and evaluators; fail before any scoring.

    ``task_options`` are :data:`opd_dynamics.evaluators.tasks.OPTIONS` (columns, answer_regex, chat_template, limit,
    stop, max_new_tokens) for a task given as text; ``dtype="auto"`` is bfloat16 on CUDA and float32 on the CPU.
    """
    roots = [Path(runs)] if isinstance(runs, (str, os.PathLike)) else [Path(r) for r in runs]
    if not roots:
        raise OPDError("no run directories given", hint="pass one run directory (checkpoint-N/ inside)")
    specs = [e if isinstance(e, EvalSpec) else EvalSpec.parse(e) for e in (evaluators or DEFAULT_EVALUATORS)]
    for s in specs:
        s.check()
    if base is None:
        base = _lab_dir(roots[0], "base")
        if base is None:
            raise OPDError(f"{roots[0]}: no base model W₀ given", hint="pass --base DIR (the model training started from)")
    if teacher is None:
        teacher = _lab_dir(roots[0], "teacher")
    task_spec = None
    if task is None:
        task_spec = detect(roots[0])
        if task_spec is None:
            raise OPDError(f"{roots[0]}: no task given and none detected", hint="pass --task lab:PRESET or --task FILE.jsonl")
    elif isinstance(task, TaskSpec):
        task_spec = task
    elif isinstance(task, str):
        task_spec = TaskSpec.parse(task, seed=seed, **(task_options or {}))
    if task_options and not isinstance(task, str):
        raise OPDError(f"task options {sorted(task_options)} need a task given as text",
                       hint="pass task='FILE' or 'dataset:NAME:split', or set the options on the TaskSpec")
    task_obj = task_spec.build() if task_spec is not None else task
    engine = engine or InterventionEngine(base, device=device, dtype=dtype, tokenizer=tokenizer)
    names = list(names) if names else [None] * len(roots)
    opened = [engine.open_run(r, name=n) for r, n in zip(roots, names)]
    tok_dir = Path(engine._tok_dir)
    if engine._tokenizer is None and not (tok_dir / "tokenizer.json").exists():
        final = opened[0].steps[opened[0].final_step].path  # TRL saves the tokenizer beside every checkpoint
        if (Path(final) / "tokenizer.json").exists():
            engine._tok_dir = Path(final)
    if len({r.name for r in opened}) != len(opened):
        raise OPDError(f"two runs are named {opened[0].name!r}", hint="label them with --name, one per run")
    return Setup(engine, opened, task_spec, task_obj, specs, Path(teacher) if teacher else None, seed, progress)


def references(study: str) -> list[Plan]:
    """The two reference lines of every study: W₀ itself and the final checkpoint (identity everywhere)."""
    return [Plan(study, "reference:base", None, ()),
            Plan(study, "reference:final", None, (Rule((), EditSpec("identity")),))]


def execute(setup: Setup, study: str, plans: dict[str, list[Plan]], *, settings: dict[str, Any] | None = None,
            extra: pd.DataFrame | None = None, out: PathLike | None = None) -> pd.DataFrame:
    """Score ``plans[run.name]`` on each run; append ``extra`` rows (e.g. per-layer ‖ΔW‖_F); write if ``out``."""
    eng = setup.engine
    frames, checking = [], {}
    for run in setup.runs:
        evs = setup.build_evaluators(run)
        checking.update({ev.name: ev.details for ev in evs if ev.details})
        frames.append(eng.evaluate(run, plans[run.name], evs, progress=setup.progress))
    if extra is not None:
        frames.append(extra)
    df = pd.concat(frames, ignore_index=True) if frames else from_rows([])
    df = from_rows(df.to_dict("records")) if len(df) else df
    if out is not None:
        write(df, out, {**manifest(setup, study, plans, settings or {}), "answer_checking": checking})
    return df


def manifest(setup: Setup, study: str, plans: dict[str, list[Plan]], settings: dict[str, Any]) -> dict[str, Any]:
    eng = setup.engine
    task = setup.task_spec.to_json() if setup.task_spec else {"kind": "object", "name": getattr(setup.task, "name", "?")}
    return provenance.manifest(
        TOOL, study=study,
        base=str(Path(eng.base.path).resolve()), device=str(eng.device), dtype=str(eng.dtype).replace("torch.", ""),
        tokenizer=str(Path(eng._tok_dir).resolve()),
        teacher=str(setup.teacher.resolve()) if setup.teacher else None,
        task=task, seed=setup.seed, replayable=setup.task_spec is not None,
        evaluators=[s.to_json() for s in setup.evaluators],
        runs=[{"name": r.name, "root": str(Path(r.root).resolve()), "steps": sorted(r.steps)} for r in setup.runs],
        plans={name: [p.to_json() for p in ps] for name, ps in plans.items()},
        settings=settings,
        timing_s={k: round(v, 3) if isinstance(v, float) else v for k, v in eng.stats.items()})


def write(df: pd.DataFrame, out: PathLike, manifest_: dict[str, Any]) -> Path:
    """Replace ``out`` by ``metrics.parquet`` (long table) + ``studies.parquet`` (study frame) + ``manifest.json``,
    as one unit (:mod:`opd_dynamics.outdir`)."""
    frame = study_frame(df)
    write_results(out, {"studies.parquet": lambda p: frame.to_parquet(p, index=False), **table_files(df, manifest_)})
    return Path(out) / "metrics.parquet"


@dataclass(frozen=True)
class ReplayResult:
    table: pd.DataFrame
    compared: int            # rows matched against the recorded table (0 when none was beside the manifest)
    max_abs_diff: float


def replay(manifest_path: PathLike, *, out: PathLike | None = None, device: str | None = None, atol: float = 1e-9,
           progress: bool = True) -> ReplayResult:
    """Rebuild every plan and evaluator of a manifest, score again, and compare with the table beside it.

    Raises :class:`OPDError` when a score differs from the recorded one by more than ``atol``.
    """
    path = Path(manifest_path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    m = read_json(path, hint="point at the manifest.json a study wrote")
    if not isinstance(m, dict):
        raise OPDError(f"{path}: not a study manifest (a JSON object)", hint="point at the manifest.json a study wrote")
    if m.get("tool") != TOOL:
        raise OPDError(f"{path}: written by {m.get('tool')!r}, not by an intervention study",
                       hint="replay reproduces `opd-dynamics interventions ...` results")
    if not m.get("replayable", True):
        raise OPDError(f"{path}: the study scored a task given as a Python object", hint="use --task lab:PRESET or a JSONL file")
    setup = prepare([r["root"] for r in m["runs"]], base=m["base"], names=[r["name"] for r in m["runs"]],
                    task=TaskSpec.from_json(m["task"]), evaluators=[EvalSpec.from_json(e) for e in m["evaluators"]],
                    teacher=m.get("teacher"), seed=m.get("seed", 0), device=device or m.get("device", "cpu"),
                    dtype=m.get("dtype", "float32"), progress=progress, tokenizer=m.get("tokenizer"))
    for run, rec in zip(setup.runs, m["runs"]):
        if sorted(run.steps) != rec["steps"]:
            raise OPDError(f"{run.root}: steps {sorted(run.steps)} differ from the recorded {rec['steps']}",
                           hint="a checkpoint was added or removed since the study ran")
    plans = {name: [Plan.from_json(p) for p in ps] for name, ps in m["plans"].items()}
    df = execute(setup, m["study"], plans)
    compared, worst = 0, 0.0
    recorded_path = path.parent / "metrics.parquet"
    if recorded_path.exists():
        rec = load(recorded_path)
        rec = rec[rec["module"].str.startswith(PLAN_PREFIX)]
        key = ["run", "step", "module", "metric"]
        merged = df.merge(rec, on=key, suffixes=("", "_recorded"))
        compared = len(merged)
        if compared != len(rec):
            raise OPDError(f"replay matched {compared} of {len(rec)} recorded rows", hint="the manifest and table disagree")
        diffs = (merged["value"] - merged["value_recorded"]).abs()
        worst = float(diffs.max()) if compared else 0.0
        if math.isnan(worst) or worst > atol:
            i = int(diffs.fillna(math.inf).idxmax())
            row = merged.loc[i]
            raise OPDError(f"replay differs: {row['run']} {row['module']} {row['metric']} = {row['value']!r}, "
                           f"recorded {row['value_recorded']!r} (|Δ| = {worst:.3g} > atol {atol:g})",
                           hint="different hardware or library versions can move low bits; compare versions in the manifest")
    if out is not None:
        write(df, out, {**m, "replayed_from": str(path.resolve())})
    return ReplayResult(df, compared, worst)
