"""Reader and run discovery on real trainer layouts, and every kind of bad input."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from opd_dynamics.errors import CheckpointError, OPDError
from opd_dynamics.io.checkpoint import Checkpoint
from opd_dynamics.io.discovery import find_steps, open_run, powers_of_two_missing
from opd_dynamics.io.safetensors_file import SafetensorsFile
from shards import reshard, to_bin


def _ckpt(d: Path, tensors: dict, config: dict | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(config or {"model_type": "llama"}))
    return d


def test_reader_speaks_safe_open_verbs_and_matches_safetensors(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.randn(5).to(torch.bfloat16), "c": torch.arange(6, dtype=torch.int64)}
    save_file(t, tmp_path / "m.safetensors", metadata={"format": "pt", "note": "x"})
    f = SafetensorsFile(tmp_path / "m.safetensors")
    assert sorted(f.keys()) == ["a", "b", "c"]
    assert f.metadata()["note"] == "x"
    assert f.shape("a") == (3, 4) and f.dtype("b") == torch.bfloat16
    for k, v in t.items():
        assert torch.equal(f.get_tensor(k), v)


def test_sharded_index_reads_only_named_shards(synthetic_runs, tmp_path):
    src = synthetic_runs["opd"] / "checkpoint-8"
    d = reshard(src, tmp_path / "sharded", stray=True)
    ck = Checkpoint(d)
    assert ck.format == "safetensors-sharded"
    single = Checkpoint(src)
    assert sorted(ck.keys()) == sorted(single.keys())
    for k in single.keys():
        assert torch.equal(ck.get_tensor(k), single.get_tensor(k)), k


def test_bin_needs_permission_and_loads_weights_only(synthetic_runs, tmp_path):
    d = to_bin(synthetic_runs["opd"] / "checkpoint-1", tmp_path / "bin")
    with pytest.raises(CheckpointError, match="allow-pickle"):
        Checkpoint(d)
    ck = Checkpoint(d, allow_pickle=True)
    ref = Checkpoint(synthetic_runs["opd"] / "checkpoint-1")
    k = ref.keys()[0]
    assert torch.equal(ck.get_tensor(k), ref.get_tensor(k))


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    d = tmp_path / "evil"
    d.mkdir()
    torch.save({"w": torch.ones(2), "x": _Evil()}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot load safely"):
        Checkpoint(d, allow_pickle=True)


@pytest.mark.parametrize("layout", ["hf", "verl", "verl_actor", "plain_underscore", "plain_dash"])
def test_discovers_real_trainer_layouts(layout, tmp_path):
    t = {"model.layers.0.mlp.up_proj.weight": torch.randn(4, 3)}
    for step in (1, 2, 4):
        sub = {"hf": f"checkpoint-{step}", "verl": f"global_step_{step}/actor/huggingface",
               "verl_actor": f"global_step_{step}/actor", "plain_underscore": f"step_{step}",
               "plain_dash": f"step-{step}"}[layout]
        _ckpt(tmp_path / "run" / sub, t)
        if layout == "verl":  # verl also leaves FSDP shards beside the HF export
            torch.save({}, tmp_path / "run" / f"global_step_{step}" / "actor" / "model_world_size_1_rank_0.pt")
    found = find_steps(tmp_path / "run")
    assert sorted(found) == [1, 2, 4]


def test_single_checkpoint_directory_is_a_run(tmp_path):
    d = _ckpt(tmp_path / "final_model", {"w": torch.randn(2, 2)})
    (d / "trainer_state.json").write_text(json.dumps({"global_step": 37}))
    assert find_steps(d) == {37: d}


def test_base_is_required_and_explained(synthetic_runs):
    with pytest.raises(OPDError, match="--base"):
        open_run(synthetic_runs["opd"])
    run = open_run(synthetic_runs["opd"], base=synthetic_runs["base"])
    assert sorted(run.steps) == [1, 2, 4, 8] and run.final_step == 8


def test_step_zero_checkpoint_is_the_default_base(tmp_path):
    for s in (0, 1, 2):
        _ckpt(tmp_path / f"checkpoint-{s}", {"w": torch.full((2, 2), float(s))})
    run = open_run(tmp_path)
    assert sorted(run.steps) == [1, 2] and run.base.path.name == "checkpoint-0"


def test_missing_powers_of_two_warn(tmp_path):
    for s in (4, 8, 12):
        _ckpt(tmp_path / f"checkpoint-{s}", {"w": torch.zeros(2, 2)})
    base = _ckpt(tmp_path.parent / f"{tmp_path.name}_base", {"w": torch.zeros(2, 2)})
    assert powers_of_two_missing([4, 8, 12]) == [1, 2]
    with pytest.warns(UserWarning, match=r"steps \[1, 2\] are missing"):
        open_run(tmp_path, base=base)


@pytest.mark.parametrize("case", ["empty", "no_checkpoints", "no_such_dir"])
def test_empty_and_wrong_directories(case, tmp_path):
    d = tmp_path / "run"
    if case != "no_such_dir":
        d.mkdir()
    if case == "no_checkpoints":
        (d / "notes.txt").write_text("hello")
    with pytest.raises(OPDError, match="empty|no checkpoints|no such directory"):
        find_steps(d)


def test_truncated_file_is_named(synthetic_runs, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(synthetic_runs["opd"] / "checkpoint-1", d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        Checkpoint(d)


@pytest.mark.parametrize("header", [b"\xff" * 8 + b"{}", (20).to_bytes(8, "little") + b"{not json at all!!!}",
                                    (3).to_bytes(8, "little") + b"[1]", b"abc"])
def test_corrupt_header_is_named(tmp_path, header):
    (tmp_path / "model.safetensors").write_bytes(header)
    with pytest.raises(CheckpointError, match="model.safetensors: (corrupt|not a safetensors)"):
        Checkpoint(tmp_path)


def test_missing_shard_and_index_problems(synthetic_runs, tmp_path):
    d = reshard(synthetic_runs["opd"] / "checkpoint-1", tmp_path / "sh")
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors: missing shard"):
        Checkpoint(d)
    (d / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors.index.json"):
        Checkpoint(d)


def test_unknown_step_dir_is_explained(tmp_path):
    (tmp_path / "global_step_5" / "actor").mkdir(parents=True)
    torch.save({}, tmp_path / "global_step_5" / "actor" / "trainer_state_rank_0.pt")
    with pytest.raises(CheckpointError, match="without weights in a known format"):
        find_steps(tmp_path)
