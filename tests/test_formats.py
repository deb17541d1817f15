"""The one detection registry and the Reader protocol: a test per step layout, and the engine on the protocol alone."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from opd_dynamics.engine import run_metrics
from opd_dynamics.errors import CheckpointError
from opd_dynamics.io import formats
from opd_dynamics.io.discovery import Run, find_steps, open_run
from opd_dynamics.io.reader import Reader, Updates, read_state
from opd_dynamics.metrics.registry import Spec

W = "model.layers.0.mlp.up_proj.weight"


def _hf(d: Path, value: float = 0.0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file({W: torch.full((4, 3), value)}, d / "model.safetensors")
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return d


def _adapter(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file({f"base_model.model.{W[:-7]}.lora_A.weight": torch.ones(1, 3),
               f"base_model.model.{W[:-7]}.lora_B.weight": torch.ones(4, 1)}, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps({"r": 1, "lora_alpha": 1, "peft_type": "LORA"}))
    return d


# (layout, step directory under the run root, where the weights sit under it, expected format)
LAYOUTS = [
    ("hf-trainer", "checkpoint-{n}", "", "safetensors"),
    ("verl-hf-export", "global_step_{n}", "actor/huggingface", "safetensors"),
    ("verl-actor-hf", "global_step_{n}", "actor", "safetensors"),
    ("torchtitan-step", "step-{n}", "", "safetensors"),
    ("plain-step", "step_{n}", "", "safetensors"),
    ("megatron-iter", "iter_{n:07d}", "", "safetensors"),
    ("openrlhf-actor", "_actor/global_step{n}", "", "safetensors"),
    ("peft-adapter", "checkpoint-{n}", "", "peft-lora"),
]


@pytest.mark.parametrize("layout,step_dir,sub,fmt", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_each_layout_is_detected_and_opened(layout, step_dir, sub, fmt, tmp_path):
    run, base = tmp_path / "run", _hf(tmp_path / "base")
    for n in (1, 2, 4):
        where = run / step_dir.format(n=n) / sub
        _adapter(where) if fmt == "peft-lora" else _hf(where, float(n))
    if layout == "megatron-iter":
        (run / "latest_checkpointed_iteration.txt").write_text("4")
    if layout == "openrlhf-actor":
        (run / "_actor" / "latest").write_text("global_step4")
    found = find_steps(run)
    assert sorted(found) == [1, 2, 4]
    module, where = formats.detect(found[2])
    assert module.FORMAT == fmt and where == found[2]
    assert formats.detect(where)[1] == where  # detection is idempotent on its own answer
    r = open_run(run, base=base)
    for ck in r.steps.values():
        assert isinstance(ck, Reader) and ck.format.startswith(fmt) and ck.partial == (fmt == "peft-lora")
        assert isinstance(ck, Updates) == ck.partial
    state = read_state(r.steps[4], W)
    assert (state.dense() if ck.partial else state).dtype == torch.float32


def test_hf_export_is_preferred_over_rank_shards_and_missing_ranks_are_named(tmp_path):
    step = tmp_path / "run" / "global_step_5"
    _hf(step / "actor" / "huggingface", 5.0)
    torch.save({}, step / "actor" / "model_world_size_2_rank_0.pt")
    assert formats.detect(step)[0] is formats.safetensors  # verl wrote an HF export: read that
    shutil.rmtree(step / "actor" / "huggingface")
    assert formats.detect(step) == (formats.verl_fsdp, step / "actor")
    with pytest.raises(CheckpointError, match=r"model_world_size_2_rank_1\.pt: missing rank file"):
        open_run(tmp_path / "run", base=_hf(tmp_path / "base"))


def test_checkpoint_without_config_takes_the_base_config(tmp_path):
    base = _hf(tmp_path / "base")
    (base / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 3}))
    step = tmp_path / "run" / "checkpoint-1"
    _hf(step, 1.0)
    (step / "config.json").unlink()
    r = open_run(tmp_path / "run", base=base)
    assert r.steps[1].config["hidden_size"] == 3


def test_registry_lists_every_format_once():
    assert len(set(formats.names())) == len(formats.FORMATS)
    for fmt in formats.FORMATS:
        assert callable(fmt.detect) and callable(fmt.open) and isinstance(fmt.FORMAT, str)


class DictReader:
    """A Reader over a dict: the engine must need nothing beyond the protocol."""

    format, partial = "dict", False

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor]):
        self.path, self._t, self.reads = path, tensors, 0

    def keys(self):
        return list(self._t)

    def shape(self, name):
        return tuple(self._t[name].shape)

    def dtype(self, name):
        return self._t[name].dtype

    def get_tensor(self, name):
        self.reads += 1
        return self._t[name].clone()

    def file_of(self, name):
        return self.path

    def __contains__(self, name):
        return name in self._t

    @property
    def config(self):
        return {}

    def metadata(self):
        return {}


def test_engine_needs_only_the_protocol(tmp_path):
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(6, 5, generator=g, dtype=torch.float64)
    u = torch.randn(6, 1, generator=g, dtype=torch.float64)
    v = torch.randn(1, 5, generator=g, dtype=torch.float64)
    base = DictReader(tmp_path, {W: w0.float()})
    steps = {1: DictReader(tmp_path, {W: (w0 + u @ v).float()})}
    assert isinstance(base, Reader)
    rows = run_metrics([Run("r", tmp_path, base, steps)], [Spec("frobenius"), Spec("spectral_norm")], progress=False)
    got = {r[-2]: r[-1] for r in rows}
    oracle = float(torch.linalg.matrix_norm((u @ v).float().double()))  # rank 1: spectral == Frobenius
    assert got["frobenius"] == pytest.approx(oracle, rel=1e-5) and got["spectral_norm"] == pytest.approx(oracle, rel=1e-5)
    assert base.reads == 1 and steps[1].reads == 1
