"""The one plug-in registry behind metrics, evaluators and edits: a name is taken once, entry points of all three
families load from an installed distribution, a broken one is a one-line error, and no registry imports its
plug-ins (no import circles)."""
from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pytest

import opd_dynamics
from opd_dynamics import edits
from opd_dynamics.evaluators import registry as ev_registry
from opd_dynamics.metrics import registry as m_registry
from opd_dynamics.plugins import PluginError

PACKAGE = Path(opd_dynamics.__file__).parent
FAMILIES = [(m_registry.METRICS, "opd_dynamics.metrics"), (ev_registry.EVALUATORS, "opd_dynamics.evaluators"),
            (edits.EDITS, "opd_dynamics.edits")]


@pytest.fixture
def clean_registries(monkeypatch):
    """Each registry with a private copy of its records and its entry points not yet loaded."""
    for reg, _ in FAMILIES:
        monkeypatch.setattr(reg, "_items", dict(reg._items))
        monkeypatch.setattr(reg, "_entry_points_loaded", False)


def test_one_registry_class_serves_all_three_families():
    assert {type(reg).__name__ for reg, _ in FAMILIES} == {"Registry"}
    assert [reg.group for reg, _ in FAMILIES] == [group for _, group in FAMILIES]


@pytest.mark.parametrize("family", ["metric", "evaluator", "edit"])
def test_a_name_is_registered_once(family, clean_registries):
    """edits.py used to overwrite a name silently; now every family refuses a second factory under a taken name."""
    def other():
        """A different factory."""

    decorate = {"metric": lambda: m_registry.metric("frobenius", family="norms"),
                "evaluator": lambda: ev_registry.evaluator("accuracy"),
                "edit": lambda: edits.edit("scale")}[family]
    taken = {"metric": "frobenius", "evaluator": "accuracy", "edit": "scale"}[family]
    with pytest.raises(PluginError, match=f"{family} '{taken}' registered twice") as err:
        decorate()(other)
    assert "\n" not in str(err.value) and "another" in str(err.value)
    assert edits.get("scale").factory is edits.scale_edit  # the built-in survives


def _fake_distribution(root: Path, entry_points: str, module: str) -> None:
    """An installed distribution on ``root``: a module plus a ``.dist-info`` declaring entry points."""
    (root / "fakeplug.py").write_text(textwrap.dedent(module))
    info = root / "fakeplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


PLUGIN = '''
    import torch
    from opd_dynamics.metrics import metric
    from opd_dynamics.evaluators import evaluator
    from opd_dynamics.edits import edit

    @metric("fake_trace", family="fake", bounds=(-1e9, 1e9), label="trace of ΔW")
    def fake_trace():
        """tr(ΔW)."""
        return lambda view: float(torch.trace(view.delta.double()))

    @evaluator("fake_const", bounds=(0, 1), unit="%")
    def fake_const(ctx, value: float = 0.5):
        """A constant score."""
        return lambda model: value

    @edit("fake_negate")
    def fake_negate():
        """−ΔW."""
        return lambda w0, d, others: -d
'''
ENTRY_POINTS = '''
    [opd_dynamics.metrics]
    fake_trace = fakeplug:fake_trace

    [opd_dynamics.evaluators]
    fake_const = fakeplug:fake_const

    [opd_dynamics.edits]
    fake_negate = fakeplug:fake_negate
'''


def test_entry_points_of_all_three_families_load_from_an_installed_distribution(tmp_path, monkeypatch,
                                                                                clean_registries):
    _fake_distribution(tmp_path, ENTRY_POINTS, PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fakeplug", raising=False)
    import torch

    from opd_dynamics.metrics import output
    from tests.helpers import view_of

    assert "fake_trace" in m_registry.available() and "fake_const" in ev_registry.available()
    assert "fake_negate" in edits.available()
    d = torch.eye(3, dtype=torch.float64)
    assert m_registry.Spec.parse("fake_trace").build()(view_of(torch.zeros(3, 3), d)) == 3.0
    assert output("fake_trace").axis_label == "trace of ΔW" and output("fake_trace").bounds == (-1e9, 1e9)
    assert edits.EditSpec.parse("fake_negate").build()(None, d, {}).equal(-d)
    ev = ev_registry.EvalSpec.parse("fake_const:value=0.25").build(ev_registry.EvalContext(None, None))
    assert ev(torch.nn.Linear(1, 1)) == 0.25 and ev.unit == "%"


def test_a_broken_entry_point_is_a_one_line_error(tmp_path, monkeypatch, clean_registries):
    _fake_distribution(tmp_path, "[opd_dynamics.edits]\nbroken = fakeplug_missing:nothing\n", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"entry point broken = 'fakeplug_missing:nothing' .* does not load") as e:
        edits.available()
    assert "\n" not in str(e.value) and "uninstall" in str(e.value)


def test_an_entry_point_that_registers_nothing_says_how_to_fix_it(tmp_path, monkeypatch, clean_registries):
    _fake_distribution(tmp_path, "[opd_dynamics.metrics]\nundecorated = fakeplug:plain\n",
                       "def plain():\n    return lambda view: 0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fakeplug", raising=False)
    with pytest.raises(PluginError, match=r"registers no metric 'undecorated'.*@metric\('undecorated'"):
        m_registry.available()


@pytest.mark.parametrize("registry", ["metrics/registry.py", "evaluators/registry.py", "plugins.py"])
def test_registries_never_import_their_plug_ins(registry):
    """A registry imports only the standard library, torch and ``plugins``/``errors``: the family package's
    ``__init__`` imports the plug-ins, which import the registry — one direction, no circle."""
    tree = ast.parse((PACKAGE / registry).read_text())
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            own.add("." * node.level + (node.module or ""))
            own.update("." * node.level + a.name for a in node.names if not node.module)
    assert own <= {"..plugins", "..errors", ".errors"}, own


def test_edits_module_loads_with_its_builtins_and_nothing_of_the_engine(fresh_imports):
    """In a fresh interpreter (``tests/fresh_imports.py``; only the light ``opd_dynamics.analyze`` before it)."""
    loaded = fresh_imports["edits"]
    assert "opd_dynamics.edits" in loaded
    assert "opd_dynamics.engine" not in loaded and "opd_dynamics.metrics.direction" not in loaded
