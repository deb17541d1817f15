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
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol

from ..plugins import FactoryFacts, PluginSpec, Registry, check_settings

ENTRY_POINT_GROUP = "opd_dynamics.metrics"


class Trajectory(Protocol):
    def collect(self, view) -> Any: ...
    def finalize(self, states: dict[int, Any]) -> dict[int, float | dict[str, float]]: ...


@dataclass(frozen=True)
class Output:
    """One output row of a metric, with the facts figures and reports show: its axis ``label``, its ``unit`` ("%"
    means the value is stored as a fraction and shown ×100) and the ``bounds`` every value lies in (NaN aside).

    >>> o = Output("spectral_ratio", "share of the top direction (%)", unit="%", bounds=(0, 1))
    >>> o.scale, Output("min_dim").axis_label
    (100.0, 'min dim')
    """

    name: str
    label: str = ""
    unit: str = ""
    bounds: tuple[float, float] = (-math.inf, math.inf)

    @property
    def scale(self) -> float:
        """Factor from the stored value to the shown one (100 for a percentage)."""
        return 100.0 if self.unit == "%" else 1.0

    @property
    def axis_label(self) -> str:
        return self.label or self.name.replace("_", " ")


@dataclass(frozen=True)
class MetricInfo(FactoryFacts):
    """Facts about a metric: what it needs, what it returns (each output's label, unit, bounds), where it comes from."""

    name: str
    factory: Callable[..., Any]
    family: str
    columns: tuple[Output, ...]
    matrix: bool = True          # needs a 2-D tensor
    trajectory: bool = False     # collect/finalize across steps
    needs_after: bool = False    # needs W_t exactly as stored (not W_ref + ΔW)
    paper: str = ""
    suffix: str = ""             # appended to the output names when one analysis asks this metric with several settings

    @property
    def outputs(self) -> tuple[str, ...]:
        """The output rows' names (the table's ``metric`` values)."""
        return tuple(o.name for o in self.columns)

    @property
    def bounds(self) -> tuple[float, float]:
        """The first output's bounds."""
        return self.columns[0].bounds


METRICS: Registry[MetricInfo] = Registry("metric", ENTRY_POINT_GROUP, " (`opd-dynamics list-metrics` lists them)")


def metric(name: str, *, family: str, outputs: tuple[str | Output, ...] | None = None, matrix: bool = True,
           trajectory: bool = False, needs_after: bool = False, bounds: tuple[float, float] | None = None,
           label: str = "", unit: str = "", paper: str = "") -> Callable:
    """Register a metric factory under ``name``.

    ``outputs`` names its output rows (default: ``name`` alone); ``label``, ``unit`` and ``bounds`` describe every
    output given as a plain name, an :class:`Output` states its own.
    """
    lo_hi = tuple(bounds) if bounds is not None else (-math.inf, math.inf)
    columns = tuple(o if isinstance(o, Output) else Output(o, label, unit, lo_hi) for o in (outputs or (name,)))

    def wrap(factory):
        factory.metric_info = METRICS.add(MetricInfo(name, factory, family, columns, matrix, trajectory,
                                                     needs_after, paper))
        return factory

    return wrap


def available() -> dict[str, MetricInfo]:
    """All registered metrics (built-ins and entry points), by name."""
    return METRICS.available()


def get(name: str) -> MetricInfo:
    """Look a metric up; an unknown name is answered with the nearest valid names."""
    return METRICS.get(name)


def output(column: str) -> Output:
    """The facts of the output row a table's ``metric`` value names (a ``[settings]`` suffix ignored); a name no
    metric declares (an evaluator's score, a study's own row) gets a plain record: its name as label, no unit.

    >>> output("spectral_ratio[k=3]").unit, output("accuracy:split=test").axis_label
    ('%', 'accuracy:split=test')
    """
    name = str(column).split("[", 1)[0]
    for info in available().values():
        for o in info.columns:
            if o.name == name:
                return o
    return Output(str(column))


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

    >>> settings_suffixes([Spec("alignment_to_final"), Spec("alignment_to_final", {"mode": "paired", "k": 20})])
    ['', '[mode=paired]']
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
