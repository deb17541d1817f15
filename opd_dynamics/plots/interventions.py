"""Figures of the intervention studies, drawn from the long table a study returns (or from its study frame).

Thin adapters over :mod:`opd_dynamics.plots.studies` (same palette, same reference-line styles): the plan rows of
the long table become the study frame (:func:`opd_dynamics.interventions.study_frame`), one evaluator metric is
kept (``metric=``; default: the first one that is not ``update_norm``), and the sliding-window bars come from the
table's own ``frobenius`` rows. matplotlib is imported only when a figure is drawn.
"""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from ._style import PlotDataError
from ..frames import METRIC, STUDY, is_study_frame


def _frame(df: pd.DataFrame, study: str, metric: str | None) -> pd.DataFrame:
    if is_study_frame(df):
        frame = df
    else:
        from ..interventions import study_frame

        frame = study_frame(df)
    frame = frame[frame[STUDY] == study]
    if frame.empty:
        raise PlotDataError(f"{study}: the table has no plan rows of this study", hint=f"run the {study} study first")
    metrics = list(dict.fromkeys(frame[METRIC]))
    metric = metric or metrics[0]
    if metric not in metrics:
        raise PlotDataError(f"{study}: no {metric!r} scores (found {metrics})", hint="pass metric= one of them")
    return frame[frame[METRIC] == metric]


def sliding_window(df: pd.DataFrame, *, metric: str | None = None, run: str | None = None,
                   colors: Mapping[str, str] | None = None):
    """Score per window centre (0-based), MLP and attention windows, over per-layer ‖ΔW_T‖_F bars."""
    from . import studies

    table = None if is_study_frame(df) else df[~df["module"].str.startswith("plan:")]
    return studies.sliding_window(_frame(df, "sliding_window", metric), table, run=run, colors=colors)


def norm_scaling(df: pd.DataFrame, *, metric: str | None = None, colors: Mapping[str, str] | None = None):
    """Score of W₀ + α·ΔW_T against the global ‖α·ΔW_T‖_F."""
    from . import studies

    return studies.norm_scaling(_frame(df, "norm_scaling", metric), colors=colors)


def spectral_partition(df: pd.DataFrame, *, metric: str | None = None, colors: Mapping[str, str] | None = None):
    """Score against the share of singular components kept (top, bottom, top rescaled)."""
    from . import studies

    return studies.spectral_partition(_frame(df, "spectral_partition", metric), colors=colors)


def early_rescale(df: pd.DataFrame, *, metric: str | None = None, colors: Mapping[str, str] | None = None):
    """Score of norm-rescaled early checkpoints against β."""
    from . import studies

    return studies.early_rescale(_frame(df, "early_rescale", metric), colors=colors)


def embedding_revert(df: pd.DataFrame, *, metric: str | None = None, colors: Mapping[str, str] | None = None):
    """Bars: final model with embeddings at W₀, W₀ with only the final embeddings; base/final as lines."""
    from . import studies

    return studies.study_bars(_frame(df, "embedding_revert", metric), "embedding_revert", colors=colors)


def subspace_projection(df: pd.DataFrame, *, metric: str | None = None, colors: Mapping[str, str] | None = None):
    """Bars per run: ΔW_T projected onto its early top-K right subspace, and the early checkpoint itself."""
    from . import studies

    return studies.study_bars(_frame(df, "subspace_projection", metric), "subspace_projection", colors=colors)


FIGURES = {"sliding_window": sliding_window, "norm_scaling": norm_scaling, "embedding_revert": embedding_revert,
           "spectral_partition": spectral_partition, "early_rescale": early_rescale,
           "subspace_projection": subspace_projection}


def figure(df: pd.DataFrame, study: str | None = None, **kw):
    """The figure of ``study`` (default: the only study in ``df``)."""
    if study is None:
        from ..interventions import study_frame

        studies_present = sorted(set((df if is_study_frame(df) else study_frame(df))[STUDY]))
        if len(studies_present) != 1:
            raise PlotDataError(f"the table holds studies {studies_present}", hint="pass study=")
        study = studies_present[0]
    if study not in FIGURES:
        raise PlotDataError(f"no figure for study {study!r}", hint=f"studies: {', '.join(FIGURES)}")
    return FIGURES[study](df, **kw)
