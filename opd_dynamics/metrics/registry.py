"""Metric plug-ins: decorated factories, a frozen ``Spec`` that rebuilds any of them, and did-you-mean lookup.

A metric is a factory whose keyword arguments are its settings. Calling it returns either

- a function ``compute(view) -> float | dict[str, float]`` (a dict names several output rows), or
- a :class:`Trajectory`: ``collect(view) -> state`` per step and ``finalize({step: state}) -> {step: value}``
  for metrics with memory across steps (e.g. alignment to the final update).

Third-party packages register factories under the entry-point group ``opd_dynamics.metrics``
(``name = "pkg.module:factory"``, the factory decorated with :func:`metric`).

>>> spec = Spec.parse("alignment_to_final:k=10,side=right")
>>> spec, Spec.from_json(spec.to_json()) == spec
(Spec(name='alignment_to_final', args={'k': 10, 'side': 'right'}), True)
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, ClassVar, Protocol

from ..plugins import FactoryFacts, PluginSpec, check_settings, lookup

ENTRY_POINT_GROUP = "opd_dynamics.metrics"


class Trajectory(Protocol):
    def collect(self, view) -> Any: ...
    def finalize(self, states: dict[int, Any]) -> dict[int, float | dict[str, float]]: ...


@dataclass(frozen=True)
class MetricInfo(FactoryFacts):
    """Facts about a metric: what it needs, what it returns, where it comes from."""

    name: str
    factory: Callable[..., Any]
    family: str
    outputs: tuple[str, ...]
    matrix: bool = True          # needs a 2-D tensor
    trajectory: bool = False     # collect/finalize across steps
    needs_after: bool = False    # needs W_t exactly as stored (not W_ref + ΔW)
    bounds: tuple[float, float] | None = None
    paper: str = ""
    suffix: str = ""             # appended to the output names when one analysis asks this metric with several settings


REGISTRY: dict[str, MetricInfo] = {}


def metric(name: str, *, family: str, outputs: tuple[str, ...] | None = None, matrix: bool = True,
           trajectory: bool = False, needs_after: bool = False, bounds: tuple[float, float] | None = None,
           paper: str = "") -> Callable:
    """Register a metric factory under ``name``."""

    def wrap(factory):
        if name in REGISTRY and REGISTRY[name].factory is not factory:
            raise ValueError(f"metric {name!r} registered twice")
        REGISTRY[name] = MetricInfo(name, factory, family, outputs or (name,), matrix, trajectory,
                                    needs_after, bounds, paper)
        factory.metric_info = REGISTRY[name]
        return factory

    return wrap


def _load_builtins() -> None:
    from . import direction, embedding_shift, norms, noise_floor, principal, sparsity, spectrum  # noqa: F401  (registration side effect)


_entry_points_loaded = False


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def available() -> dict[str, MetricInfo]:
    """All registered metrics (built-ins and entry points), by name."""
    _load_builtins()
    _load_entry_points()
    return dict(sorted(REGISTRY.items()))


def get(name: str) -> MetricInfo:
    """Look a metric up; an unknown name is answered with the nearest valid names."""
    return lookup(name, available(), "metric", " (`opd-dynamics list-metrics` lists them)")


@dataclass(frozen=True, eq=True)
class Spec(PluginSpec):
    """A metric name plus its settings: enough to rebuild it from a manifest."""

    KIND: ClassVar[str] = "metric"

    __hash__ = PluginSpec.__hash__

    @property
    def info(self) -> MetricInfo:
        return get(self.name)

    def build(self):
        """Instantiate the metric; bad settings are a clear error."""
        info = self.info
        check_settings(info.factory, self.args, self.name, "metric")
        return info.factory(**self.args)


DEFAULT_METRICS = ("frobenius", "relative_update", "spectral_norm", "spectral_ratio", "effective_rank",
                   "top1pct_ratio", "stable_rank", "alignment_to_final")


def settings_suffixes(specs: list[Spec]) -> list[str]:
    """The ``metric`` column's name suffix of each spec: '' for a metric asked once; ``[key=value,…]`` (its settings
    that differ from the defaults) when the same metric is asked several times, so the table names them apart.

    >>> settings_suffixes([Spec("alignment_to_final"), Spec("alignment_to_final", {"mode": "subspace", "k": 20})])
    ['', '[mode=subspace]']
    """
    count = Counter(s.name for s in specs)
    out = []
    for s in specs:
        defaults = s.info.defaults if count[s.name] > 1 else {}
        diff = {k: v for k, v in sorted(s.args.items()) if k not in defaults or defaults[k] != v}
        out.append("[" + ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in diff.items()) + "]"
                   if count[s.name] > 1 and diff else "")
    return out


def unique_specs(specs: list[Spec]) -> list[Spec]:
    """``specs`` without repeats of one metric with the same effective settings (defaults filled in); order kept."""
    seen, out = set(), []
    for s in specs:
        key = (s.name, json.dumps({**s.info.defaults, **s.args}, sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out
