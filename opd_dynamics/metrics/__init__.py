"""Metrics: pure functions of one module's view (W_ref, ΔW, its shared spectrum), as plug-ins.

Importing this package registers the built-ins (one file per family: norms, spectrum, direction, principal,
sparsity); :mod:`.registry` holds the decorator and never imports them back. A new metric is one file with one
``@metric(...)`` factory, listed below or declared as an entry point (see ``docs/architecture.md``).
"""
from .registry import METRICS, MetricInfo, Output, Spec, available, get, metric, output
from . import direction, embedding_shift, noise_floor, norms, principal, sparsity, spectrum  # noqa: F401,E402  (built-ins register themselves)

__all__ = ["METRICS", "MetricInfo", "Output", "Spec", "available", "get", "metric", "output"]
