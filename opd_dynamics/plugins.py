"""What every plug-in family (metrics, evaluators, edits) shares: one :class:`Registry` (decorator registration,
entry points, did-you-mean lookup), the frozen ``name + settings`` spec that rebuilds a plug-in from a manifest, and
the ``name:key=value,…`` syntax.

Each family owns one ``Registry`` and a decorator that adds to it; its built-ins register themselves when the family
package is imported (``metrics/__init__.py``, ``evaluators/__init__.py``; ``edits.py`` holds its own), and other
packages add plug-ins under the entry-point group ``opd_dynamics.<family>``. The registry never imports its plug-ins,
so there is no import circle.

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
from importlib import metadata
from typing import Any, Callable, ClassVar, Generic, Mapping, TypeVar

from .errors import OPDError, SelectionError


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


class PluginError(OPDError):
    """A plug-in package is broken: its entry point does not load, or it registers a name that is taken."""


Info = TypeVar("Info")


class Registry(Generic[Info]):
    """One plug-in family: name -> info record (a frozen dataclass with ``name`` and ``factory``).

    Records are added by the family's decorator (:meth:`add`); the entry points of group ``opd_dynamics.<family>``
    (``name = "pkg.module:factory"``, the factory decorated) are loaded once, on the first :meth:`available`.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Info:
    ...     name: str
    ...     factory: object
    >>> reg = Registry("widget", "opd_dynamics.widgets")
    >>> _ = reg.add(Info("knob", int))
    >>> list(reg.available()), reg.get("knob").factory
    (['knob'], <class 'int'>)
    """

    def __init__(self, kind: str, group: str, hint: str = ""):
        self.kind = kind            # "metric", "evaluator", "edit": how errors name one
        self.group = group          # the entry-point group
        self.hint = hint            # appended to an unknown name's hint, e.g. the CLI command that lists them
        self._items: dict[str, Info] = {}
        self._entry_points_loaded = False

    def add(self, info: Info) -> Info:
        """Register ``info`` under ``info.name``; a name taken by another factory is an error (the same factory
        registered again, e.g. its module re-imported, replaces itself)."""
        old = self._items.get(info.name)
        if old is not None and _qualname(old.factory) != _qualname(info.factory):
            raise PluginError(f"{self.kind} {info.name!r} registered twice: by {_qualname(old.factory)} and "
                              f"{_qualname(info.factory)}", hint=f"give one of them another {self.kind} name")
        self._items[info.name] = info
        return info

    def available(self) -> dict[str, Info]:
        """Every registered plug-in (built-ins and entry points), by name."""
        if not self._entry_points_loaded:
            self._entry_points_loaded = True
            for ep in metadata.entry_points(group=self.group):
                self._load(ep)
        return dict(sorted(self._items.items()))

    def _load(self, ep) -> None:
        where = f"entry point {ep.name} = {ep.value!r} (group {self.group})"
        try:
            ep.load()
        except Exception as e:  # a broken third-party package: name it, do not crash with its traceback
            raise PluginError(f"{where} does not load: {type(e).__name__}: {e}",
                              hint="fix or uninstall the package that declares it") from None
        if ep.name not in self._items:
            raise PluginError(f"{where} loads but registers no {self.kind} {ep.name!r}",
                              hint=f"decorate its factory with @{self.kind}({ep.name!r}, ...)")

    def get(self, name: str) -> Info:
        """Look a plug-in up; an unknown name is answered with the nearest valid names."""
        return lookup(name, self.available(), self.kind, self.hint)


def _qualname(factory: Any) -> str:
    return f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', repr(factory))}"


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
