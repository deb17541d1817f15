"""Intervention studies (EffOPD arXiv 2605.11739; docs/interventions.md): each builds plans, scores them with the engine, returns the long table.

Every study takes the run directory (or several) and the same setup keywords (:func:`._common.prepare`):
``base`` (W₀; default: ``out/base`` of a lab layout), ``task`` (``"lab:PRESET"``, a JSONL path, a
:class:`~opd_dynamics.evaluators.TaskSpec` or a task object; default: detected from a lab layout), ``evaluators``
(specs, default ``["accuracy"]``), ``teacher`` (for ``kl``), ``seed``, ``device``, ``dtype``, ``engine`` (reuse a
loaded W₀ across studies), ``progress``; and ``out=DIR`` to write ``metrics.parquet`` + ``studies.parquet`` +
``manifest.json`` (replay with :func:`replay`). Each study includes two reference plans, W₀ and the final
checkpoint. Figures: :mod:`opd_dynamics.plots.interventions`.
"""
from ._common import ReplayResult, prepare, replay
from .early_rescale import early_rescale
from .embedding_revert import embedding_revert
from .norm_scaling import norm_scaling
from .sliding_window import sliding_window
from .spectral_partition import spectral_partition
from .subspace_projection import subspace_projection

STUDIES = {f.__name__: f for f in (sliding_window, norm_scaling, embedding_revert, spectral_partition,
                                    early_rescale, subspace_projection)}

__all__ = ["STUDIES", "ReplayResult", "prepare", "replay", *STUDIES]
