"""docs/architecture.md shows how to add a metric, an evaluator, an edit and a checkpoint format, each as one
complete file: run each file as written and use what it adds the way a user would."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from opd_dynamics import edits
from opd_dynamics.evaluators import registry as ev_registry
from opd_dynamics.io import formats
from opd_dynamics.metrics import registry as m_registry

DOC = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def _block(heading: str) -> str:
    """The ```python block under the ``### heading`` of the page."""
    text = DOC.read_text()
    section = text.split(f"### {heading}", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _load(code: str, name: str, tmp_path: Path):
    path = tmp_path / (name.rpartition(".")[2] + ".py")
    path.write_text(code)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def clean_registries(monkeypatch):
    for reg in (m_registry.METRICS, ev_registry.EVALUATORS, edits.EDITS):
        monkeypatch.setattr(reg, "_items", dict(reg._items))
    yield
    for name in [m for m in sys.modules if m.startswith(("my_pkg_doc", "opd_dynamics.io.formats.npz_doc"))]:
        del sys.modules[name]


def test_the_metric_file(tmp_path, clean_registries):
    from tests.helpers import view_of

    _load(_block("A metric"), "my_pkg_doc_metric", tmp_path)
    w0 = torch.zeros(3, 4, dtype=torch.float64)
    wt = torch.tensor([[1.0, -5.0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64)
    got = m_registry.Spec.parse("max_abs_update").build()(view_of(w0, wt))
    assert got["max_abs_update"] == 5.0
    assert got["max_abs_share"] == pytest.approx(5.0 / math.sqrt(1 + 25 + 4), rel=1e-12)
    share = m_registry.output("max_abs_share")
    assert share.unit == "%" and share.scale == 100.0 and share.bounds == (0, 1)


class _Tokenizer:
    def __call__(self, text):
        return {"input_ids": [ord(c) % 16 for c in text]}


class _Model(torch.nn.Module):
    """Logits = one-hot of the last token times 2: the largest logit is always 2."""

    def forward(self, ids):
        return type("Out", (), {"logits": 2.0 * torch.nn.functional.one_hot(ids, 16).double()})()


class _Task:
    def examples(self, split):
        return [type("Ex", (), {"prompt": p})() for p in ("1+1=", "2+2=", "3+3=")]


def test_the_evaluator_file(tmp_path, clean_registries):
    _load(_block("An evaluator"), "my_pkg_doc_evaluator", tmp_path)
    ev = ev_registry.EvalSpec.parse("mean_logit:limit=2").build(ev_registry.EvalContext(_Task(), _Tokenizer()))
    model = _Model().train()
    assert ev(model) == 2.0 and model.training and ev.name == "mean_logit:limit=2" and ev.unit == "logit"


def test_the_edit_file(tmp_path, clean_registries):
    _load(_block("An edit"), "my_pkg_doc_edit", tmp_path)
    d = torch.tensor([[4.0, -1.0], [-3.0, 0.5]], dtype=torch.float64)
    got = edits.EditSpec.parse("clip:fraction=0.5").build()(None, d, {})
    assert got.tolist() == [[2.0, -1.0], [-2.0, 0.5]]


def _npz_model(path: Path, weights: dict[str, np.ndarray]) -> None:
    path.mkdir(parents=True)
    np.savez(path / "weights.npz", **weights)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))


def test_the_checkpoint_format_file(tmp_path, monkeypatch, clean_registries):
    """The format module, added to ``FORMATS``, carries a run of .npz checkpoints through the whole analysis."""
    from opd_dynamics import analyze

    npz = _load(_block("A checkpoint format"), "opd_dynamics.io.formats.npz_doc", tmp_path)
    monkeypatch.setattr(formats, "FORMATS", formats.FORMATS + (npz,))
    rng = np.random.default_rng(0)
    name = "model.layers.0.mlp.up_proj.weight"
    w0 = rng.standard_normal((8, 6)).astype(np.float32)
    _npz_model(tmp_path / "base", {name: w0})
    deltas = {}
    for step in (1, 2):
        deltas[step] = (0.1 * step * rng.standard_normal((8, 6))).astype(np.float32)
        _npz_model(tmp_path / "run" / f"checkpoint-{step}", {name: w0 + deltas[step]})
    df = analyze([tmp_path / "run"], base=tmp_path / "base", metrics=["frobenius"], progress=False, device="cpu")
    for step, d in deltas.items():
        want = np.linalg.norm(((w0 + d) - w0).astype(np.float64))  # ΔW is the float32 difference, exactly
        got = df[(df.step == step) & (df.module == name)]["value"].item()
        assert got == pytest.approx(want, rel=1e-9)
    reader = npz.open(tmp_path / "base")
    assert reader.format == "npz" and reader.keys() == [name] and reader.config["num_hidden_layers"] == 1
