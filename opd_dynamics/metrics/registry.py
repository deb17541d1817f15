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

import difflib
import inspect
import json
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Protocol

from ..errors import SelectionError

ENTRY_POINT_GROUP = "opd_dynamics.metrics"


class Trajectory(Protocol):
    def collect(self, view) -> Any: ...
    def finalize(self, states: dict[int, Any]) -> dict[int, float | dict[str, float]]: ...


@dataclass(frozen=True)
class MetricInfo:
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

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.factory)
        return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


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
    from . import direction, norms, principal, sparsity, spectrum  # noqa: F401  (registration side effect)


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
    known = available()
    if name not in known:
        near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else f"choose from: {', '.join(known)}"
        raise SelectionError(f"unknown metric {name!r}", hint=hint + " (`opd-dynamics list-metrics` lists them)")
    return known[name]


def _coerce(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass(frozen=True)
class Spec:
    """A metric name plus its settings: enough to rebuild it from a manifest."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(self.args, sort_keys=True)))

    @classmethod
    def parse(cls, text: str) -> "Spec":
        """``name`` or ``name:key=value,key=value`` (values parsed as JSON when they can be)."""
        name, _, rest = text.partition(":")
        args = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise SelectionError(f"metric setting {item!r} in {text!r} lacks '='", hint="write name:key=value")
            args[key.strip()] = _coerce(value.strip())
        return cls(name.strip(), args)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Spec":
        return cls(d["name"], dict(d.get("args", {})))

    @property
    def info(self) -> MetricInfo:
        return get(self.name)

    def build(self):
        """Instantiate the metric; bad settings are a clear error."""
        info = self.info
        try:
            inspect.signature(info.factory).bind(**self.args)
        except TypeError:
            raise SelectionError(f"metric {self.name!r} does not take settings {sorted(self.args)}",
                                 hint=f"its settings are {info.defaults}") from None
        return info.factory(**self.args)


DEFAULT_METRICS = ("frobenius", "relative_update", "spectral_norm", "spectral_ratio", "effective_rank",
                   "top1pct_ratio", "stable_rank", "alignment_to_final")
