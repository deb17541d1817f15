"""opd-dynamics: how post-training (OPD, RL, SFT) moves LLM weights.

Public surface::

    analyze(paths, base=..., metrics=..., select=..., against=...) -> long DataFrame
    table1(df)                      EffOPD Table-1 summary (mean over attention + MLP matrices)
    open_run(dir, base=...)         discover checkpoints of one run
    Checkpoint(dir)                 one model directory, read tensor by tensor
    metric, Spec, available_metrics plug-in registry
    watch(run_or_results, ...)      a live run's metrics against step, redrawn in place in a notebook
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import CheckpointError, OPDError, SelectionError
# Eager, so the public name ``analyze`` is the function whatever is imported later (the submodule of the same name
# binds the package attribute only when first imported: here). analyze.py imports torch and pandas inside functions.
from .analyze import analyze

# Public name -> (module, attribute). Imported on first use (PEP 562), so `import opd_dynamics` and the CLI's
# `--help` do not pay for torch, pandas and pyarrow (1.7 s of a 5 s run on a small trajectory, measured).
_LAZY = {
    "table1": (".summary", "table1"),
    "open_run": (".io.discovery", "open_run"),
    "Run": (".io.discovery", "Run"),
    "Checkpoint": (".io.checkpoint", "Checkpoint"),
    "metric": (".metrics.registry", "metric"),
    "Spec": (".metrics.registry", "Spec"),
    "available_metrics": (".metrics.registry", "available"),
    "COLUMNS": (".table", "COLUMNS"),
    "load": (".table", "load"),
    "validate": (".table", "validate"),
    "watch": (".notebook", "watch"),
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from .io.checkpoint import Checkpoint
    from .io.discovery import Run, open_run
    from .metrics.registry import Spec, metric
    from .metrics.registry import available as available_metrics
    from .summary import table1
    from .notebook import watch
    from .table import COLUMNS, load, validate

__version__ = "0.1.0"
__all__ = ["analyze", "table1", "open_run", "Run", "Checkpoint", "metric", "Spec", "available_metrics",
           "COLUMNS", "load", "validate", "watch", "OPDError", "CheckpointError", "SelectionError", "__version__"]


def __getattr__(name: str):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'opd_dynamics' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
