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

Files, one idea each: :mod:`.inputs` (what is read and recognised), :mod:`.tables` (Table 1 and per-kind means as
CSV/LaTeX/HTML), :mod:`.figures` (which figure each input gets, drawn to files), :mod:`.page` (the HTML page),
:mod:`.build` (:func:`build_report`: the directory written as one unit).
"""
from .build import MARKER, build_report
from .inputs import Inputs, load_inputs
from .tables import kind_means, to_latex

__all__ = ["build_report", "load_inputs", "Inputs", "kind_means", "to_latex", "MARKER"]
