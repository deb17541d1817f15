"""What a fresh interpreter loads: one ``python -c`` runs entry points in a fixed order and lists ``sys.modules``
after each (the ``fresh_imports`` fixture of ``conftest.py``).

Each fresh interpreter costs seconds of imports (torch, then transformers), so the laziness checks of
``test_layering.py``, ``test_plugins.py`` and ``test_reliability.py`` share one. The order is chosen so that no
step can hide a fault of another: the submodule ``opd_dynamics.analyze`` is imported first (the import order that
once turned ``opd_dynamics.analyze`` into a module), each step's list holds everything the earlier steps loaded
(a module loaded too early fails the later checks as well, it never passes them), and the cheap entry points come
before the heavy ones.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def steps(opd: Path, base: Path) -> dict[str, str]:
    """name -> code, run in this order in one interpreter."""
    return {
        "analyze_submodule": "from opd_dynamics.analyze import open_runs",
        "edits": "from opd_dynamics.edits import available; assert 'spectral' in available()",
        # what is loaded when the engine's loop starts (the list is that moment's, kept in _AT): the loop's peak
        # memory must not carry pandas/pyarrow, which only the table needs
        "loop": "import opd_dynamics, opd_dynamics.executors as _x\n_real = _x.stream\n"
                "def _spy(*a, **k):\n    globals().setdefault('_AT', sorted(sys.modules))\n    return _real(*a, **k)\n"
                f"_x.stream = _spy\nopd_dynamics.analyze([{str(opd)!r}], base={str(base)!r}, progress=False)\n"
                "_x.stream = _real",
        "analysis": f"import opd_dynamics\nopd_dynamics.analyze([{str(opd)!r}], base={str(base)!r}, progress=False, "
                    "cache=False)",
        "evaluators": "from opd_dynamics.evaluators import available; assert 'accuracy' in available()",
        "lab": "import opd_dynamics.lab as lab; lab.PRESETS",
        "demo": "import types, opd_dynamics.demo\nfrom opd_dynamics import analyze\n"
                "assert not isinstance(analyze, types.ModuleType), analyze",
    }


def loaded_in_turn(opd: Path, base: Path) -> dict[str, list[str]]:
    """{step: sorted sys.modules after it}; a failing step fails here with the interpreter's stderr."""
    probe = "import json, sys\n" + "".join(f"{code}\nprint(json.dumps([{name!r}, globals().pop('_AT', None) or "
                                           "sorted(sys.modules)]))\n" for name, code in steps(opd, base).items())
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(json.loads(line) for line in out.stdout.splitlines() if line.startswith('["'))
