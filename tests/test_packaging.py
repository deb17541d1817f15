"""Packaging facts a fresh install depends on."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "opd_dynamics").rglob("__init__.py")}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"
    assert "opd_dynamics_cli" in listed and "cli" not in listed  # never install a top-level `cli`


def test_library_does_not_import_plotting_or_cli_at_import_time():
    import subprocess
    import sys

    code = ("import sys, opd_dynamics; bad = [m for m in ('matplotlib', 'opd_dynamics_cli', 'typer') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
