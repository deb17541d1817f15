"""Named conventions: ``paper`` (the papers' text, the default) and ``authors`` (the authors' released code).

The papers and the code released with them (caiyuchen-ustc/EffOPD for EffOPD, arXiv 2605.11739; thunlp/OPD for
Rethinking OPD, arXiv 2604.13016) make different choices in a few places. ``preset="authors"`` (``--preset
authors``) switches every one of them to the released code's choice; settings given explicitly still win.
docs/fidelity.md lists each choice, both numbers on a planted input and the test that pins it.

Each entry below is keyed by the part of the toolkit it configures and holds that part's keyword arguments.

>>> settings("effopd", "authors")
{'rule': '>', 'params': 'authors'}
>>> resolve("effopd", "paper", rule=None, params=None)
{'rule': '>=', 'params': 'weights'}
>>> resolve("effopd", "authors", rule=">=", params=None)   # an explicit setting wins
{'rule': '>=', 'params': 'authors'}
"""
from __future__ import annotations

from typing import Any

from .errors import OPDError

PRESETS = ("paper", "authors")
DEFAULT = "paper"

_TABLE: dict[str, dict[str, dict[str, Any]]] = {
    # part                     paper text (default)                         authors' released code
    "metric:top1pct_ratio":   {"paper": {"rounding": "ceil"},             "authors": {"rounding": "floor"}},
    "metric:hill_alpha":      {"paper": {"on": "sigma"},                  "authors": {"on": "lambda"}},
    "metric:rank1_pca_evr":   {"paper": {"standardize": False},           "authors": {"standardize": True}},
    "table1":                 {"paper": {"aggregate": "mean"},            "authors": {"aggregate": "ratio_of_sums"}},
    "effopd":                 {"paper": {"rule": ">=", "params": "weights"},
                               "authors": {"rule": ">", "params": "authors"}},
    "spectral_partition":     {"paper": {"ranks": None, "rest": "final"},
                               "authors": {"ranks": (1,), "rest": "base"}},
    "tokens":                 {"paper": {"convention": "paper"},          "authors": {"convention": "thunlp"}},
}


def check(preset: str | None) -> str:
    """The preset's name (``None`` is the default); an unknown name is a one-line error."""
    preset = DEFAULT if preset is None else preset
    if preset not in PRESETS:
        raise OPDError(f"preset {preset!r} unknown", hint=f"use one of {', '.join(PRESETS)} (docs/fidelity.md)")
    return preset


def settings(part: str, preset: str | None) -> dict[str, Any]:
    """The keyword arguments ``preset`` gives ``part`` (e.g. ``"effopd"``, ``"metric:top1pct_ratio"``)."""
    return dict(_TABLE[part][check(preset)])


def resolve(part: str, preset: str | None, **given) -> dict[str, Any]:
    """``preset``'s settings for ``part``, with every ``given`` value that is not None taking precedence."""
    out = settings(part, preset)
    out.update({k: v for k, v in given.items() if v is not None})
    return out


def metric_specs(specs: list, preset: str | None) -> list:
    """Metric specs with the preset's settings filled in where the spec does not set them itself."""
    from .metrics.registry import Spec

    preset = check(preset)
    if preset == DEFAULT:
        return list(specs)
    out = []
    for s in specs:
        part = f"metric:{s.name}"
        extra = settings(part, preset) if part in _TABLE else {}
        out.append(Spec(s.name, {**extra, **s.args}) if extra else s)
    return out


def recorded(results) -> str:
    """The preset an analysis recorded in the ``manifest.json`` beside its table (``paper`` when none is recorded:
    tables written before presets existed, or a table without a manifest)."""
    from pathlib import Path

    from .table import MANIFEST_NAME, load_manifest

    p = Path(results)
    if not ((p if p.is_dir() else p.parent) / MANIFEST_NAME).exists():
        return DEFAULT
    return check(load_manifest(results).get("settings", {}).get("preset"))


def parts() -> list[str]:
    """Every part a preset configures (each is a row of docs/fidelity.md)."""
    return list(_TABLE)
