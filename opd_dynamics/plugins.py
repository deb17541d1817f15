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
import types
import typing
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
    """Fail with a clear error when ``factory`` does not take these keyword settings, or a value does not fit its
    annotation (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``X | None``; others are not checked).

    >>> from typing import Literal
    >>> def f(k: int = 20, mode: Literal["paired", "subspace"] = "paired"): ...
    >>> check_settings(f, {"mode": "diagonal"}, "f", "metric")
    Traceback (most recent call last):
    ...
    opd_dynamics.errors.SelectionError: metric 'f' setting mode='diagonal': expected one of 'paired', 'subspace' (fix: its settings are {'k': 20, 'mode': 'paired'})
    """
    sig = inspect.signature(factory)
    defaults = {p.name: p.default for p in sig.parameters.values() if p.default is not inspect.Parameter.empty}
    try:
        sig.bind(*leading, **args)
    except TypeError:
        raise SelectionError(f"{what} {name!r} does not take settings {sorted(args)}",
                             hint=f"its settings are {defaults}") from None
    try:
        hints = typing.get_type_hints(factory)
    except Exception:  # an annotation that does not resolve (a plug-in's forward reference): skip the type check
        hints = {}
    for key, value in args.items():
        ann = hints.get(key)
        if ann is not None and not _fits(value, ann):
            fix = f"its settings are {defaults}"
            if isinstance(value, str) and any(c in value for c in ";:="):
                fix = f"write settings as {name}:key=value,key=value; " + fix
            raise SelectionError(f"{what} {name!r} setting {key}={value!r}: expected {_describe(ann)}", hint=fix)


def _fits(value: Any, ann: Any) -> bool:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is Any:
        return True
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is typing.Union or isinstance(ann, types.UnionType):
        return any(_fits(value, a) for a in args)
    if ann is type(None):
        return value is None
    if ann is bool:
        return isinstance(value, bool)
    if ann is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if ann is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if ann is str:
        return isinstance(value, str)
    return True  # containers, classes: the factory checks them itself


def _describe(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is typing.Union or isinstance(ann, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(ann, str(ann))


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
        spec = cls(name.strip(), args)
        spec.check()  # unknown names, settings and values fail when parsed, not when used
        return spec

    LEADING: ClassVar[tuple] = ()  # positional arguments the factory takes before its settings

    def check(self) -> None:
        """Fail on an unknown name, an unknown setting or a value that does not fit the factory's annotation."""
        check_settings(self.info.factory, self.args, self.name, self.KIND, *self.LEADING)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_json(cls, d: dict[str, Any]):
        return cls(d["name"], dict(d.get("args", {})))
