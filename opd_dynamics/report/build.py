"""``build_report``: results -> the report directory, built beside ``out`` and swapped in whole (:mod:`opd_dynamics.outdir`)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from ..errors import OPDError
from ..io.storage import StorageConfig, as_path, is_remote
from ..outdir import claim
from ..provenance import package_version
from ..table import RUN
from .figures import draw, figures
from .inputs import Inputs, load_inputs
from .page import page
from .tables import write_tables

PathLike = str | os.PathLike
MARKER = "report.json"


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
    from ..plots._style import run_colors

    order = list(dict.fromkeys(list(inputs.table[RUN].unique()) +
                               (list(inputs.studies["run"].unique()) if inputs.studies is not None else [])))
    colors = run_colors(order)
    (tmp / "figures").mkdir()
    (tmp / "tables").mkdir()
    t1, t1_notes = write_tables(inputs, tmp / "tables")
    drawn, skipped = draw(figures(inputs, colors), tmp / "figures", formats)
    (tmp / "index.html").write_text(page(title, inputs, colors, t1, drawn, skipped, t1_notes), encoding="utf-8")
    (tmp / MARKER).write_text(json.dumps({
        "tool": "opd-dynamics report", "version": package_version("opd-dynamics", "unknown"), "title": title,
        "inputs": [{k: v for k, v in s.items() if k != "manifest"} for s in inputs.sources],
        "colors": colors, "figures": [f.slug for f, _, _ in drawn],
        "skipped": {f.slug: why for f, why in skipped}}, indent=2))
