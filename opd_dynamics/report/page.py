"""The report's page: one self-contained HTML file (figures as base64 PNG, CSS inline, no scripts)."""
from __future__ import annotations

import base64
import datetime as _dt
import html
from typing import Sequence

import pandas as pd

from ..provenance import package_version
from .inputs import Inputs
from .tables import _html_table


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


def page(title: str, inputs: Inputs, colors, t1: pd.DataFrame | None, drawn, skipped,
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
