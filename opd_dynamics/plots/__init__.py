"""Paper figures: one function per figure, each taking a table and returning a matplotlib ``Figure``.

Analysis figures take the long table (``run, step, ref_step, module, layer, expert, kind, metric, value``);
intervention and EffOPD figures take a study frame (:mod:`opd_dynamics.frames`). Every function
accepts ``colors={run: colour}`` so that a report keeps one colour per run across figures (default:
the fixed Okabe–Ito colour of the method: OPD blue, RL vermillion, SFT green). A table that lacks what a
figure draws raises :class:`PlotDataError` (an :class:`~opd_dynamics.errors.OPDError`) saying which
metric to compute.

matplotlib is imported when a figure is drawn, never when this package is imported.

>>> import opd_dynamics.plots as P
>>> sorted(P.ANALYSIS_FIGURES)[:3]
['alignment_curves', 'layer_norm_bars', 'layer_step_heatmap']
"""
from __future__ import annotations

from ._style import OKABE_ITO, PlotDataError, run_colors
from .direction import alignment_curves, rank1_evr_bars
from ..frames import STUDY_COLUMNS, from_records, validate_study
from .geometry import principal_angles_by_kind, sparsity_by_kind
from .layers import layer_norm_bars, layer_step_heatmap
from .overview import metric_vs_step, table1_bars
from .studies import early_rescale, effopd_accuracy, norm_scaling, sliding_window, spectral_partition, study_bars

ANALYSIS_FIGURES = {f.__name__: f for f in (table1_bars, metric_vs_step, alignment_curves, layer_step_heatmap,
                                             layer_norm_bars, rank1_evr_bars, principal_angles_by_kind,
                                             sparsity_by_kind)}
STUDY_FIGURES = {"sliding_window": sliding_window, "norm_scaling": norm_scaling,
                 "spectral_partition": spectral_partition, "early_rescale": early_rescale,
                 "effopd": effopd_accuracy}

__all__ = ["PlotDataError", "OKABE_ITO", "run_colors", "STUDY_COLUMNS", "from_records", "validate_study",
           "ANALYSIS_FIGURES", "STUDY_FIGURES", *ANALYSIS_FIGURES, "sliding_window", "norm_scaling",
           "spectral_partition", "early_rescale", "effopd_accuracy", "study_bars"]
