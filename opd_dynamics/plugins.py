"""What every plug-in family (metrics, evaluators, edits) shares: the frozen ``name + settings`` spec that rebuilds
a plug-in from a manifest, the ``name:key=value,…`` syntax, and did-you-mean lookup.

>>> from opd_dynamics.metrics.registry import Spec
>>> Spec.parse("alignment_to_final:k=10,side=right").args
{'k': 10, 'side': 'right'}
"""
from __future__ import annotations

import difflib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping

from .errors import SelectionError


class FactoryFacts:
    """What every plug-in's info record can say about its ``factory``: the one-line summary and the defaults."""

    factory: Callable[..., Any]

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.splitlines()[0] if doc else ""

    @property
    def defaults(self) -> dict[str, Any]:
        sig = inspect.signature(self.factory)
        return {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def lookup(name: str, known: Mapping[str, Any], what: str, more: str = "") -> Any:
    """``known[name]``, or a :class:`SelectionError` naming the nearest valid names."""
    if name not in known:
        near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(near)}?" if near else f"choose from: {', '.join(sorted(known))}"
        raise SelectionError(f"unknown {what} {name!r}", hint=hint + more)
    return known[name]


def check_settings(factory: Callable, args: Mapping[str, Any], name: str, what: str, *leading) -> None:
    """Fail with a clear error when ``factory`` does not take these keyword settings."""
    try:
        inspect.signature(factory).bind(*leading, **args)
    except TypeError:
        params = inspect.signature(factory).parameters.values()
        defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        raise SelectionError(f"{what} {name!r} does not take settings {sorted(args)}",
                             hint=f"its settings are {defaults}") from None


def _coerce(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass(frozen=True)
class PluginSpec:
    """A plug-in name plus its settings; subclasses say which family (``KIND``) and how to build."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    KIND: ClassVar[str] = "plug-in"

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name, json.dumps(self.args, sort_keys=True, default=str)))

    @classmethod
    def parse(cls, text: str):
        """``name`` or ``name:key=value,key=value`` (values parsed as JSON when they can be)."""
        name, _, rest = text.partition(":")
        args = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            if not eq:
                raise SelectionError(f"{cls.KIND} setting {item!r} in {text!r} lacks '='", hint="write name:key=value")
            args[key.strip()] = _coerce(value.strip())
        return cls(name.strip(), args)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        return cls(d["name"], dict(d.get("args", {})))
