"""EffOPD replay as a command: open a run and its task, build the evaluator, replay, write the results directory.

:func:`replay_run` is what ``opd-dynamics effopd replay`` calls. With ``out=`` it writes, as one unit
(:mod:`opd_dynamics.outdir`):

===================  ===================================================================================
file                 content
===================  ===================================================================================
``metrics.parquet``  the long table (:mod:`opd_dynamics.table`), rows below
``manifest.json``    provenance (:mod:`opd_dynamics.provenance`): run, base, evaluator, task, ks, rule, params
``studies.parquet``  the study frame of the figures (:func:`~opd_dynamics.effopd.frame.replay_frame`)
``searches.csv``     one row per candidate tried (:attr:`ReplayReport.searches`)
``summary.csv``      one row per power of two (:attr:`ReplayReport.summary`)
``replay.json``      the manifest's content as earlier versions wrote it (kept for existing readers)
===================  ===================================================================================

Long-table rows (``layer``, ``expert``, ``kind`` missing; ``<ev>`` is the evaluator's name):

====================================  ======  ========  ================================================
module                                step    ref_step  metric: value
====================================  ======  ========  ================================================
``plan:effopd/opd/<s>``               s       0         ``<ev>``: the plain checkpoint's score
``plan:effopd/candidate/<2k>``        t = 2ⁿ  t/2       ``<ev>``: W_t + 2k·Δ's score (k = 0: W_t itself)
``plan:effopd/effopd/<t>``            t       t/2       ``<ev>``: best score; ``accepted_k``, ``matched_step``,
                                                        ``steps_saved``, ``speedup`` (NaN when unmatched)
====================================  ======  ========  ================================================
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pandas as pd

from .. import provenance
from ..errors import OPDError
from ..plans import PLAN_PREFIX
from ..presets import resolve
from ..table import from_rows, table_files
from .extrapolation import DEFAULT_KS, RULES, extrapolated_names
from .replay import ReplayReport, replay

PathLike = str | os.PathLike
TOOL = "opd-dynamics effopd replay"
DEFAULT_EVALUATOR = "accuracy:split=train,limit=50"
SUMMARY_METRICS = ("accepted_k", "matched_step", "steps_saved", "speedup")
OUTPUT_FILES = ("searches.csv", "summary.csv", "studies.parquet", "replay.json", "metrics.parquet", "manifest.json")


def replay_table(report: ReplayReport, *, run: str, metric: str) -> pd.DataFrame:
    """The long table of a replay (rows in the module docstring)."""
    rows = [(run, int(s), 0, f"{PLAN_PREFIX}effopd/opd/{int(s)}", None, None, None, metric, float(v))
            for s, v in zip(report.plain.step, report.plain.score)]
    for r in report.searches.itertuples():
        rows.append((run, int(r.step), int(r.ref_step), f"{PLAN_PREFIX}effopd/candidate/{int(r.multiplier)}", None,
                     None, None, metric, float(r.score)))
    for r in report.summary.itertuples():
        module = f"{PLAN_PREFIX}effopd/effopd/{int(r.step)}"
        rows.append((run, int(r.step), int(r.step) // 2, module, None, None, None, metric, float(r.best_score)))
        rows.extend((run, int(r.step), int(r.step) // 2, module, None, None, None, m, float(getattr(r, m)))
                    for m in SUMMARY_METRICS)
    return from_rows(rows)


def replay_run(run: PathLike, *, base: PathLike | None = None, task: str | None = None,
               evaluator: str = DEFAULT_EVALUATOR, ks=DEFAULT_KS, rule: str | None = None, params: str | None = None,
               preset: str | None = None, seed: int = 0, device: str = "cpu", out: PathLike | None = None,
               progress: bool = True, task_options: dict[str, Any] | None = None,
               tokenizer: PathLike | None = None) -> ReplayReport:
    """Replay the EffOPD search on a saved plain-OPD run, scored by one evaluator; write ``out`` if given.

    Args:
        run: plain OPD run directory (``checkpoint-N/`` at every power of two).
        base, task, seed, task_options, tokenizer: as for the intervention studies
            (:func:`opd_dynamics.studies.prepare`): W₀ and the task are found in a lab layout when not given.
        evaluator: the search's validation score (paper: 50 training examples).
        ks, rule, params, preset: the search (:func:`~opd_dynamics.effopd.replay.replay`).
        out: results directory (files in the module docstring), checked and locked before anything is read.

    Returns:
        The :class:`~opd_dynamics.effopd.replay.ReplayReport`; ``report.table`` holds the long table.
    """
    from ..outdir import claim
    from ..studies._common import prepare
    from .frame import replay_frame

    chosen = resolve("effopd", preset, rule=rule, params=params)
    if chosen["rule"] not in RULES:
        raise OPDError(f"--rule {chosen['rule']!r} not understood", hint="use >= (paper) or > (authors' code)")
    extrapolated_names([], params=chosen["params"])  # a bad name fails before anything is read
    ks = tuple(ks)
    with claim(out) if out is not None else nullcontext() as claimed:
        setup = prepare(run, base=base, task=task, evaluators=[evaluator], seed=seed, device=device,
                        progress=progress, task_options=task_options or None, tokenizer=tokenizer)
        opened = setup.runs[0]
        score = setup.build_evaluators(opened)[0]
        report = replay(opened, score, model=setup.engine.model, ks=ks, rule=chosen["rule"], params=chosen["params"],
                        device=device, progress=progress, restore=False)  # the engine is ours: no copy to give back
        report.table = replay_table(report, run=opened.name, metric=score.name)
        if claimed is not None:
            meta = {"run": str(run), "base": str(setup.engine.base.path), "evaluator": evaluator,
                    "task": setup.task_spec.to_json() if setup.task_spec else None, "answer_checking": score.details,
                    "ks": list(ks), "rule": chosen["rule"], "params": chosen["params"],
                    "preset": preset or "paper", "notes": report.notes}
            frame = replay_frame(report, run=opened.name, metric=score.name)
            claimed.commit({"searches.csv": lambda p: report.searches.to_csv(p, index=False),
                            "summary.csv": lambda p: report.summary.to_csv(p, index=False),
                            "studies.parquet": lambda p: frame.to_parquet(p, index=False),
                            "replay.json": lambda p: Path(p).write_text(json.dumps({"tool": TOOL, **meta}, indent=2)),
                            **table_files(report.table, provenance.manifest(TOOL, **meta))})
    return report
