"""Write the tutorial notebooks from the cells below (outputs stripped), so they stay reviewable as Python.

    python notebooks/make_notebooks.py          # rewrite notebooks/*.ipynb
    python notebooks/make_notebooks.py --check  # exit 1 if a notebook differs from this script

Each notebook runs in under a minute on 2 CPU cores with the presets used here; tests/test_notebooks.py
executes them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import tempfile
from pathlib import Path

import opd_dynamics
import opd_dynamics.plots as P

work = Path(tempfile.mkdtemp(prefix="opd-notebook-"))  # everything this notebook writes goes here"""

QUICKSTART = [
    new_markdown_cell("""\
# Quickstart: runs → analysis → figures

This notebook builds two small *synthetic* runs with planted update geometry (`opd`: a low-rank update whose
direction is fixed from the first step; `rl`: a flatter spectrum whose basis rotates), analyses every saved
checkpoint into the long table, and draws three figures. It runs in seconds; the real reference runs are in
`02_compare_runs.ipynb`."""),
    new_code_cell(SETUP),
    new_code_cell("""\
from opd_dynamics.synthetic import make_synthetic_runs

runs = make_synthetic_runs(work / "runs", steps=(1, 2, 4, 8), layers=3, hidden=32)
runs"""),
    new_markdown_cell("""\
`analyze` reads each checkpoint tensor by tensor and returns the **long table**: one row per
(run, step, module, metric). `--base` is W₀, the model training started from."""),
    new_code_cell("""\
metrics = ["frobenius", "relative_update", "spectral_norm", "spectral_ratio", "effective_rank",
           "top1pct_ratio", "alignment_to_final:k=2", "subspace_locking:k=2"]  # k = the planted opd rank
df = opd_dynamics.analyze([runs["opd"], runs["rl"]], base=runs["base"], metrics=metrics, progress=False,
                          out=work / "results")
df.head()"""),
    new_code_cell("""\
opd_dynamics.table1(df, final_only=True)  # EffOPD Table 1: mean over attention + MLP matrices"""),
    new_markdown_cell("Every figure is one function of the long table and returns a matplotlib `Figure`."),
    new_code_cell("P.table1_bars(df);"),
    new_markdown_cell("""\
Every similarity comes with its **chance level** as a row of its own (`*_chance`): what a random subspace of the
same size scores, k/d. Read a similarity against it, not against 0: with k = 20 in these small matrices chance
would be about 64 %, and the planted rank-2 `opd` direction would drown in 18 noise directions; with k = 2 it is 7 %.
Both compare a step with the final one, so they are blank at the final step (100 % there by construction)."""),
    new_code_cell("""\
direction = ["alignment_to_final", "alignment_to_final_chance", "subspace_locking", "subspace_locking_chance"]
opd_dynamics.table1(df)[["run", "step", *direction]]"""),
    new_markdown_cell("The same in a figure: one line per run, the chance level dashed."),
    new_code_cell("P.alignment_curves(df);"),
    new_markdown_cell("""\
`preset="authors"` reproduces the released code's conventions where they differ from the paper's text
(`docs/fidelity.md`); here Table 1 aggregates σ₁/‖ΔW‖_F as a ratio of sums across modules instead of a mean."""),
    new_code_cell("""\
opd_dynamics.table1(df, final_only=True, preset="authors")"""),
    new_code_cell('P.layer_step_heatmap(df, "relative_update");'),
    new_markdown_cell("""\
`opd-dynamics report RESULTS -o report/` (or `opd_dynamics.report.build_report`) puts every figure, with the
tables as CSV and LaTeX, in one offline HTML page: see `02_compare_runs.ipynb`."""),
]

COMPARE = [
    new_markdown_cell("""\
# OPD vs RL vs SFT: the paper's figures

`opd_dynamics.lab.reference.build_reference_runs` trains a teacher and a weak student W₀ on a small
arithmetic task, then post-trains W₀ three ways (on-policy distillation, GRPO, SFT) and saves checkpoints.
`PRESET = "tiny"` finishes in well under a minute but its models learn little; use `"small"` (about a minute
of training) or `"default"` for numbers worth reading."""),
    new_code_cell(SETUP + '\n\nPRESET = "tiny"'),
    new_code_cell("""\
from opd_dynamics.lab.reference import build_reference_runs

ref = build_reference_runs(work / "lab", preset=PRESET, progress=False)
ref.accuracy"""),
    new_code_cell("""\
from opd_dynamics.metrics.registry import available

wanted = ["frobenius", "relative_update", "spectral_norm", "spectral_ratio", "effective_rank", "top1pct_ratio",
          "stable_rank", "alignment_to_final", "subspace_locking", "rank1_pca_evr", "sparsity_bf16",
          "principal_angles"]
metrics = [m for m in wanted if m in available()]  # geometry metrics land as they are written
arms = ["opd", "rl", "sft"]
df = opd_dynamics.analyze([ref.runs[a] for a in arms], base=ref.base, names=arms, metrics=metrics,
                          progress=False, out=work / "results")
opd_dynamics.table1(df, final_only=True)"""),
    new_markdown_cell("""\
One colour per method in every figure (Okabe–Ito, colour-blind safe): OPD blue, RL vermillion, SFT green.
A figure whose metric was not computed says which `--metrics` to add."""),
    new_code_cell("colors = P.run_colors(arms)\nP.table1_bars(df, colors=colors);"),
    new_code_cell('P.metric_vs_step(df, x="progress", colors=colors);'),
    new_code_cell("""\
direction = ["alignment_to_final", "alignment_to_final_chance", "subspace_locking", "subspace_locking_chance"]
early = opd_dynamics.table1(df)
early[early.step == early.step.min()][["run", "step", *direction]]  # the first checkpoint against chance (k/d)"""),
    new_code_cell("P.alignment_curves(df, colors=colors);  # dashed: the chance level"),
    new_code_cell("P.layer_norm_bars(df, runs=arms);"),
    new_code_cell("P.rank1_evr_bars(df, colors=colors);"),
    new_code_cell("""\
for fig in (P.sparsity_by_kind, P.principal_angles_by_kind):
    try:
        fig(df, colors=colors)
    except P.PlotDataError as e:
        print(e)"""),
    new_code_cell("""\
from opd_dynamics.report import build_report

build_report([work / "results"], work / "report", title=f"OPD vs RL vs SFT ({PRESET} preset)", formats=("png",))"""),
]

STUDIES = [
    new_markdown_cell("""\
# Interventions and EffOPD

Interventions (EffOPD, arXiv 2605.11739, Figs. 1a–4c; `docs/interventions.md`) edit a run's weights module by
module — W = W₀ + (edited ΔW) — score the edited model, restore it bit for bit, and move on; EffOPD (arXiv 2605.11739
§4; `docs/effopd.md`) extrapolates along the current update direction at powers of two. Both write a **study frame** (`study, run, variant, x, metric, value`) that the figures and the report read.

This notebook uses the `tiny` reference runs so it executes in well under a minute; their models learn little, so
read the figures for their *shape*, not their numbers. `docs/interventions.md` and `docs/effopd.md` show the
same studies on the `default` runs."""),
    new_code_cell(SETUP),
    new_code_cell("""\
from opd_dynamics.lab import build_reference_runs

refs = build_reference_runs(work / "lab", preset="tiny", progress=False)
opd_run = refs.runs["opd"]
evaluators = ["loglik:split=validation"]  # mean token log-likelihood of worked solutions: smooth, cheap"""),
    new_code_cell("""\
from opd_dynamics.interventions import study_frame
from opd_dynamics.studies import norm_scaling, spectral_partition

ns = norm_scaling(opd_run, alphas=(0, 0.25, 0.5, 0.75, 1.0), evaluators=evaluators, progress=False)
sp = spectral_partition(opd_run, percents=(10, 50, 100), evaluators=evaluators, progress=False)
frame = study_frame(ns)
frame.head()"""),
    new_code_cell("P.norm_scaling(study_frame(ns));"),
    new_code_cell("P.spectral_partition(study_frame(sp));"),
    new_markdown_cell("""\
## EffOPD replay

At every saved power of two t, the search scores W_t + 2k·(W_t − W_{t/2}) for k = 1…5 with the same code the online
training hook uses, and matches the accepted score against later plain checkpoints."""),
    new_code_cell("""\
from opd_dynamics.effopd.frame import replay_frame
from opd_dynamics.effopd.replay import replay
from opd_dynamics.studies._common import prepare

setup = prepare(opd_run, evaluators=evaluators, progress=False)
score = setup.build_evaluators(setup.runs[0])[0]
report = replay(setup.runs[0], score, model=setup.engine.model, progress=False)
print(report.format())"""),
    new_code_cell("P.effopd_accuracy(replay_frame(report, run='opd', metric=score.name));"),
]

NOTEBOOKS = {"01_quickstart.ipynb": QUICKSTART, "02_compare_runs.ipynb": COMPARE,
             "03_interventions_and_effopd.ipynb": STUDIES}


def build(cells) -> nbformat.NotebookNode:
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}})
    for i, cell in enumerate(nb.cells):  # stable ids keep diffs small
        cell["id"] = f"cell-{i}"
    return nb


def render(cells) -> str:
    return nbformat.writes(build(cells)) + "\n"


def main(argv: list[str]) -> int:
    stale = []
    for name, cells in NOTEBOOKS.items():
        path, text = HERE / name, render(cells)
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        print(f"out of date: {', '.join(stale)} (run python notebooks/make_notebooks.py)")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
