"""Plans: which edit each module gets, which checkpoint supplies ΔW, and how the result is labelled.

A :class:`Plan` is an ordered list of :class:`Rule` ``(select, edit)``; for every module (a
:class:`~opd_dynamics.naming.Part`), the **first** rule whose ``--select`` clauses match it decides its edit, and a
module no rule matches **stays at W₀**. So "the final model with its embeddings reverted" is
``[(kind=embed, revert), ((), identity)]``, and "MLP weights of layers 2–6 restored" is
``[(kind=mlp_*,layer=2-6, identity)]``. ΔW comes from the ``source`` checkpoint (``"final"``, a step number or
``"p%"`` of training, see :func:`resolve_step`). Layers in selectors are 0-based.

In the results table a plan's rows carry ``module = plan:<study>/<variant>/<x>`` (:attr:`Plan.module`), so the
study, the variant and the x value can be read back (:func:`opd_dynamics.interventions.study_frame`).

>>> p = Plan("norm_scaling", "", 0.5, rules=(Rule((), EditSpec("scale", {"alpha": 0.5})),))
>>> p.module, Plan.from_json(p.to_json()) == p
('plan:norm_scaling//0.5', True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .edits import EditSpec
from .errors import OPDError
from .select import Selector

PLAN_PREFIX = "plan:"


@dataclass(frozen=True)
class Rule:
    """Modules matching every ``select`` clause (``kind=…``, ``layer=A-B``, ``name=REGEX``, ``matrix``) get ``edit``."""

    select: tuple[str, ...]
    edit: EditSpec

    @property
    def selector(self) -> Selector:
        return Selector.parse(list(self.select))

    def to_json(self) -> dict[str, Any]:
        return {"select": list(self.select), "edit": self.edit.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Rule":
        return cls(tuple(d.get("select", ())), EditSpec.from_json(d["edit"]))


@dataclass(frozen=True)
class Plan:
    """One edited model: rules, the checkpoint supplying ΔW, and its label (study, variant, x, layer)."""

    study: str
    variant: str = ""
    x: float | None = None
    rules: tuple[Rule, ...] = ()
    source: str = "final"
    layer: int | None = None  # the table's ``layer`` column (sliding-window centre, 0-based)
    note: str = field(default="", compare=False)

    def __post_init__(self):
        if "/" in self.study or "/" in self.variant:
            raise OPDError(f"plan label {self.study!r}/{self.variant!r} contains '/'", hint="use another separator")

    @property
    def module(self) -> str:
        x = "" if self.x is None or (isinstance(self.x, float) and math.isnan(self.x)) else f"{self.x:g}"
        return f"{PLAN_PREFIX}{self.study}/{self.variant}/{x}"

    def to_json(self) -> dict[str, Any]:
        return {"study": self.study, "variant": self.variant, "x": self.x, "source": str(self.source),
                "layer": self.layer, "note": self.note, "rules": [r.to_json() for r in self.rules]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Plan":
        return cls(d["study"], d.get("variant", ""), d.get("x"), tuple(Rule.from_json(r) for r in d.get("rules", ())),
                   str(d.get("source", "final")), d.get("layer"), d.get("note", ""))


def parse_label(module: str) -> tuple[str, str, float]:
    """``plan:<study>/<variant>/<x>`` -> (study, variant, x) with x NaN when empty.

    >>> parse_label("plan:sliding_window/mlp/3")
    ('sliding_window', 'mlp', 3.0)
    """
    study, variant, x = module.removeprefix(PLAN_PREFIX).split("/")
    return study, variant, float(x) if x else math.nan


def resolve_step(steps, ref: str | int) -> int:
    """A step reference -> a saved step: ``"final"`` (the last), ``"base"`` (0), ``N`` (that step) or ``"p%"``
    (the saved step nearest p % of the last step; ties go to the earlier one).

    >>> resolve_step([1, 2, 4, 8, 16], "20%"), resolve_step([1, 2, 4, 8, 16], "final")
    (4, 16)
    """
    steps = sorted(steps)
    text = str(ref).strip()
    if text == "final":
        return steps[-1]
    if text == "base":
        return 0
    if text.endswith("%"):
        try:
            p = float(text[:-1])
        except ValueError:
            raise OPDError(f"step reference {text!r} not understood", hint="use final, a step number or p%") from None
        target = p / 100 * steps[-1]
        return min(steps, key=lambda s: (abs(s - target), s))
    try:
        step = int(text)
    except ValueError:
        raise OPDError(f"step reference {text!r} not understood", hint="use final, a step number or p%") from None
    if step != 0 and step not in steps:
        raise OPDError(f"no checkpoint at step {step}; saved steps are {steps}", hint="pick one of them or use p%")
    return step
