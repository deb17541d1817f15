"""EffOPD results as the study frame (``opd_dynamics.frames``) the figures and the report read.

Rows: ``variant="opd"`` the plain run's score per saved step; ``variant="effopd"`` the best score the search
reached at each power of two (what training would continue from); ``variant="accepted"`` the steps where an
extrapolation (k ≥ 1) was accepted.
"""
from __future__ import annotations

import pandas as pd

from ..frames import from_records


def replay_frame(report, *, run: str, metric: str) -> pd.DataFrame:
    rows = [("effopd", run, "opd", float(s), metric, float(v)) for s, v in zip(report.plain.step, report.plain.score)]
    for r in report.summary.itertuples():
        rows.append(("effopd", run, "effopd", float(r.step), metric, float(r.best_score)))
        if r.accepted_k > 0:
            rows.append(("effopd", run, "accepted", float(r.step), metric, float(r.best_score)))
    return from_records(rows)
