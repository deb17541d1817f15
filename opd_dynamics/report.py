"""``report``: analysis (and study) results -> one self-contained HTML page, figures as PNG + PDF, tables as CSV + LaTeX.

Inputs are results directories written by ``opd-dynamics analyze -o`` (``metrics.parquet`` + ``manifest.json``)
and any Parquet/CSV study frames (``study, run, variant, x, metric, value``: see
:mod:`opd_dynamics.frames`) beside them or named directly. Tables are recognised by their columns; a
long table whose ``manifest.json`` names another tool (an intervention study's raw scores) is skipped, since
the study frame beside it carries the same scores.
Runs from every input are drawn side by side, each in one colour throughout.

The report is built in a temporary directory next to ``out`` and renamed into place, so an error leaves
no half report (and an existing report is only replaced by a complete one).

Layout of ``out/``::

    index.html            open offline: figures embedded as base64 PNG, CSS inline, no scripts
    figures/NAME.png|pdf  each figure, 150 dpi PNG and vector PDF
    tables/NAME.csv|tex   Table 1 (final step and every step), per-kind means, study scores
    report.json           what went in, what was drawn, what was skipped and why
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from .errors import OPDError, read_json
from .io.storage import StorageConfig, as_path, is_remote
from .outdir import claim
from .provenance import package_version
from .summary import ORDER, informative, table1
from .table import BODY_KINDS, COLUMNS, DTYPES, EXPERT, KIND, MANIFEST_NAME, METRIC, RUN, STEP, VALUE, validate, with_expert

PathLike = str | os.PathLike
MARKER = "report.json"
ANALYZE_TOOL = "opd-dynamics analyze"  # the manifest "tool" of long tables drawn as analysis results


@dataclass
class Inputs:
    """Everything read from the results paths."""

    table: pd.DataFrame
    studies: pd.DataFrame | None
    sources: list[dict] = field(default_factory=list)

    @property
    def preset(self) -> str:
        """The preset the analyses recorded (docs/fidelity.md); ``paper`` unless every analysis recorded the same."""
        recorded = {((s.get("manifest") or {}).get("settings") or {}).get("preset") or "paper"
                    for s in self.sources if s.get("kind") == "analysis"}
        return recorded.pop() if len(recorded) == 1 else "paper"


def _read(path: Path) -> pd.DataFrame:
    if is_remote(path):  # results are small: one ranged read of the whole file
        import io

        data = io.BytesIO(bytes(path.storage.read_range(path.key, 0, path.stat().st_size)))
        return pd.read_parquet(data) if path.suffix == ".parquet" else pd.read_csv(data)
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def _table_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.suffix in (".parquet", ".csv") and not p.name.startswith("."))
    parquet = {p.stem for p in files if p.suffix == ".parquet"}
    return [p for p in files if not (p.suffix == ".csv" and p.stem in parquet)]  # metrics.csv mirrors the Parquet


def load_inputs(paths: Sequence[PathLike], storage: StorageConfig | None = None) -> Inputs:
    """Read every long table and study frame under ``paths`` (local or URLs); refuse a run that two inputs both define."""
    from .frames import is_study_frame, validate_study

    if not paths:
        raise OPDError("no results given", hint="opd-dynamics report RESULTS_DIR [RESULTS_DIR ...] -o report/")
    tables, studies, sources, owner, seen = [], [], [], {}, set()
    for raw in paths:
        path = as_path(raw, storage)
        if not path.exists():
            raise OPDError(f"{path}: no such file or directory", hint="pass a directory written by analyze -o")
        found = False
        for f in _table_files(path):
            if f.resolve() in seen:  # the same file named twice (directory and file)
                found = True
                continue
            seen.add(f.resolve())
            try:
                df = _read(f)
            except Exception as e:  # unreadable file: say which one
                raise OPDError(f"{f}: cannot read ({e})", hint="re-run the command that wrote it") from None
            manifest = f.parent / MANIFEST_NAME
            meta = read_json(manifest, hint="re-run the command that wrote it") if manifest.exists() else None
            tool = (meta or {}).get("tool") if isinstance(meta, dict) else None
            is_long = set(COLUMNS) - {EXPERT} <= set(df.columns)  # tables from before the expert column too
            if is_long and tool not in (None, ANALYZE_TOOL):
                # e.g. an intervention study's raw scores: drawn from the study frame written beside them
                sources.append({"path": str(f), "kind": f"skipped ({tool} table; its study frame is drawn)"})
                continue
            if is_long:
                df = validate(with_expert(df)[list(COLUMNS)].astype(DTYPES))
                for run in df[RUN].unique():
                    if run in owner and owner[run] != f:
                        raise OPDError(f"run {run!r} is in both {owner[run]} and {f}",
                                       hint="label runs apart with `analyze --name`")
                    owner[run] = f
                tables.append(df)
                sources.append({"path": str(f), "kind": "analysis", "runs": sorted(df[RUN].unique()), "manifest": meta})
                found = True
            elif is_study_frame(df):
                df = validate_study(df)
                studies.append(df)
                sources.append({"path": str(f), "kind": "study", "studies": sorted(df["study"].unique())})
                found = True
        if not found:
            raise OPDError(f"{path}: no analysis table or study frame here",
                           hint="expected metrics.parquet (from analyze -o) or a Parquet/CSV with columns "
                                "study, run, variant, x, metric, value")
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        {c: pd.Series(dtype=t) for c, t in DTYPES.items()})
    return Inputs(table, pd.concat(studies, ignore_index=True) if studies else None, sources)


# ---------------------------------------------------------------- tables

_SHOWN = ORDER + ("hill_alpha", "rank1_pca_evr1", "rank1_pca_evr2", "sparsity_bf16", "principal_angle_left_max",
                  "principal_angle_left_mean", "principal_angle_right_max", "principal_angle_right_mean")


def _fmt(metric: str, v: float) -> str:
    from .metrics.registry import output

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


# ---------------------------------------------------------------- figures

@dataclass
class Figure:
    slug: str
    title: str
    caption: str
    draw: Callable[[], object]


def _caption(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def _figures(inputs: Inputs, colors: dict[str, str]) -> list[Figure]:
    import opd_dynamics.plots as P

    df, st = inputs.table, inputs.studies
    out: list[Figure] = []
    if len(df):
        lasts = df.groupby(RUN, observed=True)[STEP].max()
        x = "step" if lasts.nunique() == 1 else "progress"
        heat = "relative_update" if "relative_update" in set(df[METRIC]) else "frobenius"
        out += [
            Figure("table1", "Table 1 as a figure", _caption(P.table1_bars),
                   lambda: P.table1_bars(df, colors=colors)),
            Figure("metrics_vs_step", "Update geometry during training", _caption(P.metric_vs_step),
                   lambda: P.metric_vs_step(df, x=x, colors=colors)),
            Figure("alignment", "Direction: alignment to the final update and subspace locking",
                   _caption(P.alignment_curves), lambda: P.alignment_curves(df, colors=colors)),
            Figure("layer_step_heatmap", f"Where and when: {heat} by layer and step", _caption(P.layer_step_heatmap),
                   lambda: P.layer_step_heatmap(df, heat, runs=[r for r in colors if r in set(df[RUN])])),
            Figure("layer_norms", "Per-layer update size", _caption(P.layer_norm_bars),
                   lambda: P.layer_norm_bars(df, runs=[r for r in colors if r in set(df[RUN])])),
            Figure("rank1_pca", "Rank-1 trajectory PCA", _caption(P.rank1_evr_bars),
                   lambda: P.rank1_evr_bars(df, colors=colors)),
            Figure("principal_angles", "Principal angles between W₀ and W_T", _caption(P.principal_angles_by_kind),
                   lambda: P.principal_angles_by_kind(df, colors=colors)),
            Figure("sparsity_bf16", "bf16-visible update sparsity", _caption(P.sparsity_by_kind),
                   lambda: P.sparsity_by_kind(df, colors=colors)),
        ]
    if st is not None:
        for study in dict.fromkeys(st["study"]):
            metrics = list(dict.fromkeys(st.loc[st["study"] == study, "metric"]))
            for metric in metrics:  # one figure per evaluator: scores on different scales never share an axis
                several = len(metrics) > 1
                out += _study_figures(P, study, st[(st["study"] == study) & (st["metric"] == metric)], df, colors,
                                      suffix=f"_{metric}" if several else "", note=f" ({metric})" if several else "")
    return out


def _study_figures(P, study: str, st: pd.DataFrame, df: pd.DataFrame, colors, *, suffix: str,
                   note: str) -> list[Figure]:
    """The figure of one (study, metric) slice of the study frames; bars for a study without its own figure."""
    slug, title = f"study_{study}{suffix}", study.replace("_", " ").capitalize() + note
    fn = P.STUDY_FIGURES.get(study)
    if study == "sliding_window":
        return [Figure(slug, "Sliding-window intervention" + note, _caption(fn),
                       lambda: P.sliding_window(st, df if len(df) else None, colors=colors))]
    if fn is not None:
        cap = _caption(fn) + (" Replay cannot see how training would have continued after an accepted "
                              "extrapolation." if study == "effopd" else "")
        return [Figure(slug, title, cap, lambda: fn(st, colors=colors))]
    return [Figure(slug, title, _caption(P.study_bars), lambda: P.study_bars(st, study, colors=colors))]


# ---------------------------------------------------------------- HTML

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
.meta{color:#555;font-size:.9em}figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.9em;color:#444;margin-top:.4em}table{border-collapse:collapse;font-size:.85em}
th,td{padding:.25em .6em;border-bottom:1px solid #e5e5e5;text-align:right}th{background:#f6f6f6}
td:first-child,th:first-child{text-align:left}.scroll{overflow-x:auto;max-width:100%}
th{overflow-wrap:anywhere;min-width:3.5em}.swatch{display:inline-block;width:.9em;
height:.9em;border-radius:2px;margin:0 .3em -.1em .8em}.skipped{color:#8a5a00}code{font-size:.9em}
"""


def _inputs_html(inputs: Inputs, colors: dict[str, str]) -> str:
    items = []
    for s in inputs.sources:
        what = ", ".join(s.get("runs", s.get("studies", [])))
        extra = ""
        man = s.get("manifest") or {}
        dtypes = {r["name"]: ", ".join(r.get("checkpoint_dtypes", {})) for r in man.get("runs", [])}
        if dtypes:
            extra = " — checkpoint dtypes: " + "; ".join(f"{k}: {v}" for k, v in dtypes.items())
        items.append(f"<li><code>{html.escape(s['path'])}</code> ({s['kind']}: {html.escape(what)})"
                     f"{html.escape(extra)}</li>")
    legend = "".join(f'<span class="swatch" style="background:{c}"></span>{html.escape(r)}' for r, c in colors.items())
    return f"<ul>{''.join(items)}</ul><p>Run colours:{legend}</p>"


def _page(title: str, inputs: Inputs, colors, t1: pd.DataFrame | None, drawn, skipped,
          notes: Sequence[str] = ()) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p class='meta'>Built {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC by opd-dynamics "
             f"{html.escape(package_version('opd-dynamics', 'unknown'))}. Means are unweighted over attention + MLP matrices unless a caption says "
             "otherwise; layers are 0-based.</p>", "<h2>Inputs</h2>", _inputs_html(inputs, colors)]
    if t1 is not None and len(t1):
        parts += ["<h2>Table 1 — final step</h2>", _html_table(t1)]
        parts += [f"<p class='meta'>Note: {html.escape(n)}</p>" for n in notes]
        parts += ["<p class='meta'>Alignment and locking to the final update are 1 at the final step by construction "
                  "and are not shown here (see the alignment figure). Also in <code>tables/table1_final.csv</code> "
                  "and <code>.tex</code>.</p>"]
    for fig, png, width in drawn:  # shown at the figure's physical size (96 css px per inch), never blown up
        data = base64.b64encode(png).decode("ascii")
        parts.append(f"<h2 id='{fig.slug}'>{html.escape(fig.title)}</h2><figure><img alt='{html.escape(fig.title)}' "
                     f"width='{width}' "
                     f"src='data:image/png;base64,{data}'><figcaption>{html.escape(fig.caption)} "
                     f"(<code>figures/{fig.slug}.pdf</code>)</figcaption></figure>")
    if skipped:
        parts.append("<h2>Not drawn</h2><ul class='skipped'>" + "".join(
            f"<li>{html.escape(f.title)}: {html.escape(why)}</li>" for f, why in skipped) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------- build

def build_report(results: Sequence[PathLike], out: PathLike, *, title: str = "opd-dynamics report",
                 formats: Sequence[str] = ("png", "pdf"), storage: StorageConfig | dict | None = None) -> Path:
    """Build the report from results directories or table files into ``out``; return the ``index.html`` path.

    Args:
        results: directories written by ``analyze -o`` and/or study frames (files or directories holding them).
        out: report directory; replaced only by a complete report, and only if it holds an earlier report.
        title: page title.
        formats: figure files to write besides the embedded PNG (``png``, ``pdf``, ``svg``).
        storage: for results given as URLs (``s3://bucket/results/opd``): fsspec options as a dict, or a
            :class:`~opd_dynamics.io.storage.StorageConfig`.

    Figures whose metrics are absent are listed under "Not drawn" with the metric to compute.
    """
    bad = set(formats) - {"png", "pdf", "svg"}
    if bad:
        raise OPDError(f"figure formats {sorted(bad)} not supported", hint="choose from png, pdf, svg")
    target = Path(out).expanduser().resolve()
    for r in results:
        if not is_remote(as_path(r)) and (target == Path(r).resolve() or target in Path(r).resolve().parents):
            raise OPDError(f"-o {out}: is the input {r} (or holds it); the report would replace its own data",
                           hint="write the report to another directory, e.g. -o report/")
    with claim(out) as held, held.staging() as tmp:  # -o checked and locked before any reading; swapped in whole
        inputs = load_inputs(results, StorageConfig(options=dict(storage)) if isinstance(storage, dict) else storage)
        _build(inputs, tmp, title, formats)
    return held.out / "index.html"


def _build(inputs: Inputs, tmp: Path, title: str, formats: Sequence[str]) -> None:
    """Write the report's files into the (empty) directory ``tmp``."""
    from .plots import PlotDataError
    from .plots._style import pyplot, run_colors

    order = list(dict.fromkeys(list(inputs.table[RUN].unique()) +
                               (list(inputs.studies["run"].unique()) if inputs.studies is not None else [])))
    colors = run_colors(order)
    plt = pyplot()
    (tmp / "figures").mkdir()
    (tmp / "tables").mkdir()
    t1, t1_notes = None, []
    if len(inputs.table):
        t1, t1_notes = informative(_shown(table1(inputs.table, final_only=True, preset=inputs.preset), (RUN, STEP)),
                                   inputs.table)
        if inputs.preset != "paper":
            t1_notes.append(f"{inputs.preset} preset (docs/fidelity.md): σ₁/‖ΔW‖_F and top-1 % aggregate as a ratio "
                            "of sums across modules, Σx/Σ‖ΔW‖_F.")
        t1.to_csv(tmp / "tables" / "table1_final.csv", index=False)
        (tmp / "tables" / "table1_final.tex").write_text(
            to_latex(t1, "Update geometry at the final step, mean over attention and MLP matrices."))
        table1(inputs.table, preset=inputs.preset).to_csv(tmp / "tables" / "table1_all_steps.csv", index=False)
        km = _shown(kind_means(inputs.table), (RUN, KIND))
        km.to_csv(tmp / "tables" / "kind_means_final.csv", index=False)
        (tmp / "tables" / "kind_means_final.tex").write_text(
            to_latex(km, "Final-step mean of each metric per run and module kind."))
    if inputs.studies is not None:
        inputs.studies.to_csv(tmp / "tables" / "studies.csv", index=False)
    drawn, skipped = [], []
    for fig in _figures(inputs, colors):
        try:
            mpl_fig = fig.draw()
        except PlotDataError as e:
            skipped.append((fig, str(e)))
            continue
        try:
            for fmt in formats:
                mpl_fig.savefig(tmp / "figures" / f"{fig.slug}.{fmt}")
            png = (tmp / "figures" / f"{fig.slug}.png").read_bytes() if "png" in formats else _png(mpl_fig)
        finally:
            plt.close(mpl_fig)
        drawn.append((fig, png, int(mpl_fig.get_size_inches()[0] * 96)))
    (tmp / "index.html").write_text(_page(title, inputs, colors, t1, drawn, skipped, t1_notes), encoding="utf-8")
    (tmp / MARKER).write_text(json.dumps({
        "tool": "opd-dynamics report", "version": package_version("opd-dynamics", "unknown"), "title": title,
        "inputs": [{k: v for k, v in s.items() if k != "manifest"} for s in inputs.sources],
        "colors": colors, "figures": [f.slug for f, _, _ in drawn],
        "skipped": {f.slug: why for f, why in skipped}}, indent=2))


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
