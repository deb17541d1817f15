"""Which modules to analyse: ``--select`` clauses by kind, layer and name regex (all clauses must hold).

Clauses: ``kind=attn_q,mlp_*`` (globs; ``body`` = every attention and MLP matrix), ``layer=0-11`` or
``layer=3,5`` (0-based), ``name=REGEX`` (searched in the module name), ``matrix`` (2-D tensors only).

>>> from opd_dynamics.naming import parts
>>> p = parts("model.layers.3.mlp.up_proj.weight", (8, 4))[0]
>>> Selector.parse(["kind=mlp_*", "layer=0-3"]).matches(p, 2), Selector.parse(["layer=4-"]).matches(p, 2)
(True, False)
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from .errors import SelectionError
from .naming import Part
from .kinds import BODY_KINDS, KINDS


@dataclass(frozen=True)
class Selector:
    kinds: tuple[str, ...] | None = None
    layers: tuple[tuple[int, int], ...] | None = None
    regex: str | None = None
    matrix_only: bool = False

    @classmethod
    def parse(cls, clauses: list[str] | None) -> "Selector":
        kinds = layers = regex = None
        matrix_only = False
        for clause in clauses or []:
            key, eq, value = clause.partition("=")
            key = key.strip()
            if key == "matrix" and not eq:
                matrix_only = True
            elif key == "kind" and eq:
                pats = []
                for k in value.split(","):
                    k = k.strip()
                    pats.extend(BODY_KINDS if k == "body" else [k])
                for pat in pats:
                    if not fnmatch.filter(KINDS, pat):
                        raise SelectionError(f"--select kind={pat!r} matches no kind", hint=f"kinds are {', '.join(KINDS)}")
                kinds = tuple(pats)
            elif key == "layer" and eq:
                layers = tuple(_layer_range(x.strip(), clause) for x in value.split(","))
            elif key == "name" and eq:
                try:
                    re.compile(value)
                except re.error as e:
                    raise SelectionError(f"--select name={value!r} is not a valid regex ({e})", hint="escape dots as \\.") from None
                regex = value
            else:
                raise SelectionError(f"--select {clause!r} not understood",
                                     hint="use kind=..., layer=A-B, name=REGEX or matrix")
        return cls(kinds, layers, regex, matrix_only)

    def matches(self, part: Part, ndim: int) -> bool:
        if self.matrix_only and ndim != 2:
            return False
        if self.kinds is not None and not any(fnmatch.fnmatchcase(part.kind, p) for p in self.kinds):
            return False
        if self.layers is not None:
            if part.layer is None or not any(lo <= part.layer <= hi for lo, hi in self.layers):
                return False
        if self.regex is not None and not re.search(self.regex, part.name):
            return False
        return True

    def to_json(self) -> dict:
        return {"kinds": self.kinds, "layers": self.layers, "regex": self.regex, "matrix_only": self.matrix_only}


def _layer_range(text: str, clause: str) -> tuple[int, int]:
    try:
        if "-" in text:
            lo, _, hi = text.partition("-")
            return int(lo), (int(hi) if hi else 1 << 30)
        return int(text), int(text)
    except ValueError:
        raise SelectionError(f"--select {clause!r}: layer must look like 3, 0-11 or 12-", hint="layers are 0-based") from None
