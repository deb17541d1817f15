"""Layers only look down: read from the source (every ``import``, also those inside functions), and from fresh
interpreters (what a cheap entry point actually loads)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "opd_dynamics"
HEAVY = ("torch", "pandas", "matplotlib", "transformers")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, text: str | None = None) -> set[str]:
    """Every module ``path`` (or ``text`` as if it were that file) imports, relative imports resolved
    (``from . import x`` counts as ``pkg.x``)."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text() if text is None else text, str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def importers_of(target: str, files) -> list[str]:
    return sorted(str(f.relative_to(ROOT)) for f in files
                  if any(m == target or m.startswith(target + ".") for m in imports(f)))


def library_files(*exclude: str) -> list[Path]:
    return [f for f in PACKAGE.rglob("*.py") if not any(str(f.relative_to(PACKAGE)).startswith(e) for e in exclude)]


def test_the_import_scanner_sees_relative_and_nested_imports():
    """The scanner itself can fail: it must see ``from ..lab.x import y`` inside a function, and ``from . import``."""
    code = "def f():\n    from ..lab.generation import generate\nfrom . import accuracy\n"
    found = imports(PACKAGE / "evaluators" / "probe.py", code)
    assert {"opd_dynamics.lab.generation", "opd_dynamics.evaluators.accuracy"} <= found


def test_nothing_below_the_lab_imports_it():
    """``lab/`` is the reference-run trainer; only the demo (which trains the reference runs) and the CLI sit above
    it. Generation, the task protocol and token diagnostics are the library's own."""
    assert importers_of("opd_dynamics.lab", library_files("lab/", "demo.py")) == []


@pytest.mark.parametrize("layer", ["engine.py", "table.py", "frames.py", "analyze.py", "interventions.py", "effopd/",
                                   "studies/", "metrics/", "io/", "evaluators/", "edits.py", "plugins.py"])
def test_computation_layers_do_not_import_plotting(layer):
    """Schemas live with the table (``table.py``, ``frames.py``); nothing that computes imports ``plots``."""
    files = [f for f in library_files() if str(f.relative_to(PACKAGE)).startswith(layer)]
    assert files and importers_of("opd_dynamics.plots", files) == []


# The rows of docs/architecture.md's picture, top to bottom (top-level modules and packages of opd_dynamics).
LAYERS = (
    ("lab", "demo"),
    ("report", "plots", "notebook", "summary"),
    ("studies", "interventions", "effopd", "callbacks", "consistency"),
    ("analyze", "engine", "cache", "executors", "live"),
    ("evaluators", "task", "generation", "diagnostics"),
    ("presets", "edits", "plans", "patching"),
    ("metrics", "view"),
    ("io", "naming", "select", "synthetic"),
    ("table", "frames", "outdir", "kinds"),
    ("plugins", "errors", "device", "linalg", "machine", "provenance"),
)


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "opd_dynamics" else None


def upward_imports(files, layers=LAYERS) -> list[str]:
    """``file -> module`` for every import of a module in a higher row than the file's own."""
    rank = {name: -i for i, row in enumerate(layers) for name in row}
    bad = []
    for f in files:
        me = _top(_module_name(f))
        for m in sorted(imports(f)):
            other = _top(m)
            if me in rank and other in rank and other != me and rank[other] > rank[me]:
                bad.append(f"{f.relative_to(ROOT)} -> {m}")
    return bad


def test_every_import_points_down_the_layers_of_the_architecture_page():
    assert upward_imports(library_files()) == []
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for row in LAYERS:  # the picture names every row's modules
        assert all(f" {name}" in doc for name in row), row


def test_the_layer_check_can_fail():
    swapped = tuple(reversed(LAYERS))
    assert upward_imports([PACKAGE / "engine.py"], swapped)


def test_interventions_take_no_peer_or_private_helpers():
    found = imports(PACKAGE / "interventions.py")
    assert not any(m == "opd_dynamics.analyze" or m.startswith("opd_dynamics.analyze.") for m in found)
    private = [m for m in found if m.startswith("opd_dynamics.") and m.rpartition(".")[2].startswith("_")]
    assert private == [], private


def _loaded_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


def test_asking_for_the_evaluator_list_does_not_load_the_lab(fresh_imports):
    assert [m for m in fresh_imports["evaluators"] if m.startswith("opd_dynamics.lab")] == []


def test_lab_package_imports_its_modules_on_demand(fresh_imports):
    assert sorted(m for m in fresh_imports["lab"] if m.startswith("opd_dynamics.lab.")) == [
        "opd_dynamics.lab.models", "opd_dynamics.lab.presets"]


def test_import_opd_dynamics_and_help_load_no_heavy_library():
    """``import opd_dynamics`` and ``opd-dynamics --help`` stay cheap: no torch, pandas, matplotlib, transformers."""
    loaded = _loaded_after("import opd_dynamics, types; assert isinstance(opd_dynamics.analyze, types.FunctionType)")
    assert [m for m in HEAVY if m in loaded] == []
    # analyze.py is imported eagerly: what it imports at module level is paid by every `import opd_dynamics`
    ours = sorted(m for m in loaded if m.startswith("opd_dynamics"))
    assert ours == ["opd_dynamics", "opd_dynamics.analyze", "opd_dynamics.device", "opd_dynamics.errors",
                    "opd_dynamics.presets"], ours
    probe = ("import sys, atexit\n"
             f"atexit.register(lambda: print('LOADED', [m for m in {HEAVY!r} if m in sys.modules]))\n"
             "sys.argv = ['opd-dynamics', '--help']\n"
             "from opd_dynamics_cli.app import main\nmain()\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert "Usage" in out.stdout and "LOADED []" in out.stdout, out.stdout[-500:] + out.stderr[-2000:]


def test_an_analysis_loads_only_what_it_uses(fresh_imports):
    """``analyze`` needs torch, numpy, safetensors and pandas; scipy (a metric's MP median), matplotlib and
    transformers stay out of an analysis with the default metrics (each costs start-up time and ~40 MB of RSS),
    and so does ray (only ``executor="ray"`` imports it)."""
    loaded = fresh_imports["analysis"]
    assert "torch" in loaded and "opd_dynamics.engine" in loaded  # the analysis did run in the probe
    assert [m for m in ("scipy", "matplotlib", "transformers", "sklearn", "ray") if m in loaded] == []


def test_the_engine_loop_runs_without_pandas_loaded(fresh_imports):
    """pandas and pyarrow (~70 MB of RSS) are for the table: imported after the loop, so not in its peak memory
    (docs/performance.md, "Memory")."""
    assert "opd_dynamics.engine" in fresh_imports["loop"]  # the snapshot is the loop's
    assert [m for m in fresh_imports["loop"] if m.split(".")[0] in ("pandas", "pyarrow")] == []
    assert "pandas" in fresh_imports["analysis"]  # and the table does load it
