"""opd-dynamics: how post-training (OPD, RL, SFT) moves LLM weights.

Public surface::

    analyze(paths, base=..., metrics=..., select=..., against=...) -> long DataFrame
    table1(df)                      EffOPD Table-1 summary (mean over attention + MLP matrices)
    open_run(dir, base=...)         discover checkpoints of one run
    Checkpoint(dir)                 one model directory, read tensor by tensor
    metric, Spec, available_metrics plug-in registry
"""
from __future__ import annotations

from .analyze import analyze
from .errors import CheckpointError, OPDError, SelectionError
from .io.checkpoint import Checkpoint
from .io.discovery import Run, open_run
from .metrics.registry import Spec, metric
from .metrics.registry import available as available_metrics
from .summary import table1
from .table import COLUMNS, load, validate

__version__ = "0.1.0"
__all__ = ["analyze", "table1", "open_run", "Run", "Checkpoint", "metric", "Spec", "available_metrics",
           "COLUMNS", "load", "validate", "OPDError", "CheckpointError", "SelectionError", "__version__"]
