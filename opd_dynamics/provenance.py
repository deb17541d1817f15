"""The one manifest builder: what every command writes beside its table (``manifest.json``).

Every manifest starts with the same three keys — ``tool`` (the command that wrote it), ``created`` (UTC, ISO 8601,
seconds) and ``versions`` (Python and the libraries the numbers depend on) — followed by the command's own fields
(inputs, specs, settings). ``analyze`` (:mod:`opd_dynamics.analyze`), the intervention studies
(:mod:`opd_dynamics.studies`) and the EffOPD replay (:mod:`opd_dynamics.effopd.run`) all build theirs here.

>>> m = manifest("opd-dynamics analyze", settings={"against": "base"})
>>> list(m)[:3], m["settings"], "torch" in m["versions"]
(['tool', 'created', 'versions'], {'against': 'base'}, True)
"""
from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata
from typing import Any

__all__ = ["PACKAGES", "manifest", "package_version", "versions"]

#: the libraries whose versions every manifest records (their versions can move the low bits of a number)
PACKAGES = ("opd-dynamics", "torch", "numpy", "safetensors", "transformers", "pandas")


def package_version(name: str, missing: str | None = None) -> str | None:
    """The installed version of ``name`` (``missing`` when it is not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return missing


def versions(packages=PACKAGES) -> dict[str, str | None]:
    """``{"python": ..., package: version or None}``."""
    return {"python": platform.python_version(), **{p: package_version(p) for p in packages}}


def manifest(tool: str, **fields: Any) -> dict[str, Any]:
    """``{"tool", "created", "versions", **fields}``: the provenance record of one command's output."""
    return {"tool": tool, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(), **fields}
