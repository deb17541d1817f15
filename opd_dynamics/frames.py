"""The study frame: the one table interventions and EffOPD hand to figures and reports.

Columns ``study, run, variant, x, metric, value`` (plus an optional ``update_norm``):

======================  ==============================================  =========================================
``study``               ``variant``                                     ``x``
======================  ==============================================  =========================================
``sliding_window``      ``mlp`` or ``attn`` (what the window restores)  window centre layer, 0-based
``norm_scaling``        free label, e.g. ``""``                         α in W₀ + α·ΔW_T (``update_norm``:
                                                                        global ‖α·ΔW‖_F, drawn instead when given)
``spectral_partition``  ``top``, ``bottom``, ``top_rescaled``           k, % of singular components kept
``early_rescale``       the checkpoint, e.g. ``step 8 (10%)``           β (1 = full rescale to ‖ΔW_T‖_F)
``effopd``              ``opd``, ``effopd``; ``accepted`` marks          training step
                        the steps whose extrapolation was accepted
any other name          free label                                      NaN: drawn as bars per variant
======================  ==============================================  =========================================

``metric`` is the evaluator's name (``accuracy``, ``loglik``, ``kl``); ``value`` its score. In every study,
a variant ``reference:<label>`` (``reference:base``, ``reference:final``, ``reference:teacher``) with x = NaN
is drawn as a horizontal dashed line. Save a study frame as ``studies.parquet`` (any name works: the report
recognises a table by its columns) beside or inside the analysis results directory.

>>> frame = from_records([("norm_scaling", "opd", "", 0.5, "accuracy", 0.4)])
>>> list(frame.columns) == list(STUDY_COLUMNS), float(frame.loc[0, "x"])
(True, 0.5)
"""
from __future__ import annotations

import pandas as pd

STUDY, RUN, VARIANT, X, METRIC, VALUE, UPDATE_NORM = "study", "run", "variant", "x", "metric", "value", "update_norm"
STUDY_COLUMNS = (STUDY, RUN, VARIANT, X, METRIC, VALUE)
STUDY_DTYPES = {STUDY: "string", RUN: "string", VARIANT: "string", X: "float64", METRIC: "string", VALUE: "float64"}
REFERENCE_PREFIX = "reference:"


def from_records(rows: list[tuple] | list[dict]) -> pd.DataFrame:
    """Build a validated study frame from tuples in ``STUDY_COLUMNS`` order (or dicts keyed by column)."""
    df = pd.DataFrame(rows, columns=None if rows and isinstance(rows[0], dict) else list(STUDY_COLUMNS))
    if df.empty:
        df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in STUDY_DTYPES.items()})
    return validate_study(df)


def is_study_frame(df: pd.DataFrame) -> bool:
    """True when ``df`` has every study column."""
    return set(STUDY_COLUMNS) <= set(df.columns)


def validate_study(df: pd.DataFrame) -> pd.DataFrame:
    """Check the columns and coerce dtypes; return the frame (``variant`` NaN becomes ``""``) or raise ``ValueError``."""
    missing = [c for c in STUDY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"study frame lacks columns {missing}; expected {list(STUDY_COLUMNS)}")
    out = df.copy()
    out[VARIANT] = out[VARIANT].astype("object").fillna("")  # an all-empty CSV column reads back as float NaN
    out = out.astype(STUDY_DTYPES)
    if UPDATE_NORM in out.columns:
        out[UPDATE_NORM] = out[UPDATE_NORM].astype("float64")
    return out
