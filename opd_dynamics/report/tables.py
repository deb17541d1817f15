"""The report's tables: Table 1 and per-kind means, as CSV, LaTeX (booktabs) and HTML, percentages as in the paper."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..summary import ORDER, informative, table1
from ..table import BODY_KINDS, KIND, METRIC, RUN, STEP, VALUE


_SHOWN = ORDER + ("hill_alpha", "rank1_pca_evr1", "rank1_pca_evr2", "sparsity_bf16", "principal_angle_left_max",
                  "principal_angle_left_mean", "principal_angle_right_max", "principal_angle_right_mean")


def _fmt(metric: str, v: float) -> str:
    from ..metrics.registry import output

    if pd.isna(v):
        return "–"
    return f"{100 * v:.1f}%" if output(metric).unit == "%" else f"{v:.4g}"


def _shown(wide: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The key columns and the headline metrics (not bookkeeping rows such as ``min_dim`` or ``*_numel``)."""
    return wide[list(keys) + [c for c in _SHOWN if c in wide.columns]]


def kind_means(df: pd.DataFrame) -> pd.DataFrame:
    """Final-step mean of each metric per (run, kind) over attention + MLP matrices."""
    body = df[df[KIND].isin(BODY_KINDS)]
    last = body.groupby(RUN, observed=True)[STEP].transform("max")
    body = body[body[STEP] == last]
    wide = body.groupby([RUN, KIND, METRIC], observed=True)[VALUE].mean().unstack(METRIC).reset_index()
    wide[KIND] = pd.Categorical(wide[KIND], categories=list(BODY_KINDS), ordered=True)
    return wide.sort_values([RUN, KIND]).reset_index(drop=True)


_LATEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
          "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _latex_escape(text: str) -> str:
    r"""Escape LaTeX's special characters, one character at a time.

    >>> _latex_escape("top1pct_ratio 50%")
    'top1pct\\_ratio 50\\%'
    """
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(wide: pd.DataFrame, caption: str) -> str:
    """A booktabs ``table`` environment (written by hand: no jinja2 needed), percentages as in the paper."""
    cols = list(wide.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}",
             r"\begin{tabular}{" + "l" * sum(c in (RUN, STEP, KIND) for c in cols)
             + "r" * sum(c not in (RUN, STEP, KIND) for c in cols) + "}", r"\toprule",
             " & ".join(_latex_escape(str(c)) for c in cols) + r" \\", r"\midrule"]
    for _, row in wide.iterrows():
        cells = [str(row[c]) if c in (RUN, STEP, KIND) else _fmt(c, row[c]) for c in cols]
        lines.append(" & ".join(_latex_escape(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _html_table(wide: pd.DataFrame) -> str:
    cols = list(wide.columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(
        f"<td>{html.escape(str(r[c]) if c in (RUN, STEP, KIND) else _fmt(c, r[c]))}</td>" for c in cols) + "</tr>"
        for _, r in wide.iterrows())
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def write_tables(inputs, tables: Path) -> tuple[pd.DataFrame | None, list[str]]:
    """Write ``tables/`` (Table 1 at the final step and every step, per-kind means, study scores); return the
    final-step Table 1 shown on the page (``None`` without an analysis table) and its notes."""
    t1, notes = None, []
    if len(inputs.table):
        t1, notes = informative(_shown(table1(inputs.table, final_only=True, preset=inputs.preset), (RUN, STEP)),
                                inputs.table)
        if inputs.preset != "paper":
            notes.append(f"{inputs.preset} preset (docs/fidelity.md): σ₁/‖ΔW‖_F and top-1 % aggregate as a ratio of "
                         "sums across modules, Σx/Σ‖ΔW‖_F.")
        t1.to_csv(tables / "table1_final.csv", index=False)
        (tables / "table1_final.tex").write_text(
            to_latex(t1, "Update geometry at the final step, mean over attention and MLP matrices."))
        table1(inputs.table, preset=inputs.preset).to_csv(tables / "table1_all_steps.csv", index=False)
        km = _shown(kind_means(inputs.table), (RUN, KIND))
        km.to_csv(tables / "kind_means_final.csv", index=False)
        (tables / "kind_means_final.tex").write_text(
            to_latex(km, "Final-step mean of each metric per run and module kind."))
    if inputs.studies is not None:
        inputs.studies.to_csv(tables / "studies.csv", index=False)
    return t1, notes
