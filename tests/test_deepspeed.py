"""DeepSpeed ZeRO reader against checkpoints DeepSpeed itself writes (two gloo ranks on CPU, tests/ds_writer.py).

Oracles: DeepSpeed's own ``zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint`` (bit-equal tensors), and the same
fp32 trajectory gathered and saved as HF safetensors (bit-equal tensors, then equal ``analyze`` tables).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from opd_dynamics.errors import CheckpointError
from opd_dynamics.io.formats import deepspeed as ds
from opd_dynamics.io.formats.deepspeed_pickle import safe_load

if importlib.util.find_spec("deepspeed") is None:  # not imported here: it is slow and the reader never needs it
    pytest.skip("the 'test' extra installs deepspeed", allow_module_level=True)
pytestmark = pytest.mark.slow  # a two-rank DeepSpeed writer trains and saves ZeRO checkpoints

HERE = Path(__file__).parent
#: run -> tag directory pattern (ds_writer.RUNS: OpenRLHF `_actor/global_stepN/` or HF Trainer `checkpoint-N/...`)
LAYOUT = {"z2": "_actor/global_step{0}", "z3": "checkpoint-{0}/global_step{0}",
          "z2bf16": "checkpoint-{0}/global_step{0}", "z3bf16": "_actor/global_step{0}", "z1bf16": "_actor/global_step{0}",
          "trainer_z2": "checkpoint-{0}/global_step{0}", "trainer_z3": "checkpoint-{0}/global_step{0}"}
STEPS = (1, 2, 3)


def _env() -> dict[str, str]:
    return {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}


@pytest.fixture(scope="session")
def ds_runs(tmp_path_factory) -> Path:
    """Every run of ``ds_writer.RUNS`` (3 steps each) plus ``base/`` and the fp32 runs as HF safetensors."""
    out = tmp_path_factory.mktemp("deepspeed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, str(HERE / "ds_writer.py"), str(out), str(port)], env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def tag(root: Path, run: str, step: int) -> Path:
    return root / run / LAYOUT[run].format(step)


def zero_to_fp32(tag_dir: Path) -> dict[str, torch.Tensor]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(tag_dir.parent), tag=tag_dir.name)


@pytest.mark.parametrize("run", list(LAYOUT))
def test_equals_deepspeed_zero_to_fp32(ds_runs, run):
    for step in STEPS:
        ref = zero_to_fp32(tag(ds_runs, run, step))
        ck = ds.open(tag(ds_runs, run, step))
        assert ck.format == f"deepspeed-zero{run.split('z')[-1][0]}" and ck.world_size == 2 and not ck.partial
        aliases = {"lm_head.weight"} if run == "z3bf16" else set()  # tied: save_pretrained drops it too
        assert set(ck.keys()) == set(ref) - aliases
        for k in ck.keys():
            t = ck.get_tensor(k)
            assert t.dtype == ref[k].dtype == ck.dtype(k) and tuple(t.shape) == ck.shape(k)
            assert torch.equal(t, ref[k]), k
        frozen = {"z2bf16": "model.norm.weight", "z3bf16": "model.layers.0.input_layernorm.weight"}.get(run)
        # fp32 masters for every trained parameter, also in bf16 training; a frozen one has only its 16-bit copy
        assert {ck.dtype(k) for k in ck.keys() if k != frozen} == {torch.float32}
        assert ck.reads == len(ck.keys())


@pytest.mark.parametrize("run", ["z2", "z3"])
def test_fp32_trajectory_equals_hf_safetensors(ds_runs, run):
    for step in STEPS:
        hf = load_file(ds_runs / f"{run}-hf" / f"checkpoint-{step}" / "model.safetensors")
        t = tag(ds_runs, run, step)
        ck = ds.open(t.parent if t.parent.name.startswith("checkpoint-") else t)  # via checkpoint-N/latest too
        assert ck.path == t and sorted(ck.keys()) == sorted(hf)
        assert all(torch.equal(ck.get_tensor(k), hf[k]) for k in hf)


def test_reads_without_deepspeed_installed(ds_runs):
    code = ("import sys; sys.modules['deepspeed'] = None\n"
            "from opd_dynamics.io.formats import deepspeed as ds\n"
            "for d in sys.argv[1:]:\n"
            "    ck = ds.open(d); print(sum(float(ck.get_tensor(k).double().sum()) for k in ck.keys()))\n")
    dirs = [tag(ds_runs, "z2", 3), tag(ds_runs, "z3bf16", 2), tag(ds_runs, "z1bf16", 1)]
    out = subprocess.run([sys.executable, "-c", code, *map(str, dirs)], env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    want = [sum(float(ck.get_tensor(k).double().sum()) for k in ck.keys()) for ck in map(ds.open, dirs)]
    assert [float(x) for x in out.stdout.split()] == want


def test_module_option_reads_the_16bit_copy(ds_runs):
    d = tag(ds_runs, "z2bf16", 3)
    fp32, mod = ds.open(d), ds.open(d.parent, ds_weights="module")
    assert mod.format == "deepspeed-zero2-module" and mod.keys() == fp32.keys()
    hf = load_file(d.parent / "model.safetensors")  # what HF Trainer saves beside the tag: the same module
    assert all(torch.equal(mod.get_tensor(k), hf[k]) for k in hf)
    w = "model.layers.1.mlp.up_proj.weight"
    assert mod.dtype(w) == torch.bfloat16 and fp32.dtype(w) == torch.float32
    assert torch.equal(fp32.get_tensor(w).bfloat16(), mod.get_tensor(w))  # the module is the masters rounded
    assert not torch.equal(fp32.get_tensor(w), mod.get_tensor(w).float())
    z1 = ds.open(tag(ds_runs, "z1bf16", 2), ds_weights="module")
    assert z1.format == "deepspeed-zero1-module" and z1.dtype(w) == torch.bfloat16
    # ZeRO-3 keeps placeholders in its module: the model.safetensors beside the tag, else an error
    assert ds.open(tag(ds_runs, "z3", 2), ds_weights="module").format == "safetensors"
    t = tag(ds_runs, "trainer_z2", 3)  # a real HF Trainer's model.safetensors is its engine's module
    hf, mod = load_file(t.parent / "model.safetensors"), ds.open(t.parent, ds_weights="module")
    assert sorted(hf) == sorted(mod.keys()) and all(torch.equal(hf[k], mod.get_tensor(k)) for k in hf)
    with pytest.raises(CheckpointError, match="keeps no 16-bit module copy"):
        ds.open(tag(ds_runs, "z3bf16", 2), ds_weights="module")


def test_detect_layouts(ds_runs, tmp_path):
    t = tag(ds_runs, "z2bf16", 2)
    assert ds.detect(t.parent) == t and ds.detect(t) == t  # HF Trainer checkpoint-N/ -> its tag; idempotent
    actor = ds_runs / "z2" / "_actor"
    assert ds.detect(actor / "global_step1") == actor / "global_step1"
    assert ds.detect(actor) is None  # a save root: its tags are the steps (discovery walks them) ...
    assert ds.open(actor).path == actor / "global_step3"  # ... but opened directly, `latest` names the tag
    assert ds.detect(ds_runs / "base") is None and ds.detect(ds_runs / "z2-hf" / "checkpoint-1") is None
    (tmp_path / "x.pt").write_bytes(b"")
    assert ds.detect(tmp_path) is None


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_errors_name_the_file_and_the_fix(ds_runs, tmp_path):
    d = _copy(tag(ds_runs, "z3", 1), tmp_path / "a" / "global_step1")
    (d / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    with pytest.raises(CheckpointError, match=r"zero_pp_rank_1_mp_rank_00_optim_states.pt: missing rank file"):
        ds.open(d)
    d = _copy(tag(ds_runs, "z2", 1), tmp_path / "b" / "global_step1")
    shutil.copy(d / "zero_pp_rank_1_mp_rank_00_optim_states.pt", d / "zero_pp_rank_2_mp_rank_00_optim_states.pt")
    with pytest.raises(CheckpointError, match="3 optim-state rank files, but mp_rank_00_model_states.pt says the "
                                              "world size was 2"):
        ds.open(d)
    top = _copy(ds_runs / "z2bf16" / "checkpoint-1", tmp_path / "checkpoint-1")
    (top / "latest").write_text("global_step7")
    assert ds.detect(top) == top
    with pytest.raises(CheckpointError, match=r"latest: names tag 'global_step7'.*\(fix: write the existing tag"):
        ds.open(top)
    with pytest.raises(Exception, match="unknown DeepSpeed weights"):
        ds.open(d, ds_weights="bf16")


def test_only_deepspeeds_own_classes_unpickle(ds_runs, tmp_path):
    import argparse

    f = tag(ds_runs, "z2", 1) / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    osd = safe_load(f)["optimizer_state_dict"]
    assert int(osd["zero_stage"]) == 2 and osd["loss_scaler"].cur_scale == 1.0
    d = _copy(tag(ds_runs, "z2", 1), tmp_path / "global_step1")
    evil = d / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "args": argparse.Namespace(lr=1)}}, evil)
    ck = ds.open(d, allow_pickle=True)  # rank 1 is read on first use; --allow-pickle changes nothing
    with pytest.raises(CheckpointError, match=r"optim_states.pt: the pickle needs class argparse.Namespace, which is "
                                              r"not allowed.*--allow-pickle does not change this"):
        ck.get_tensor("lm_head.weight")


def test_wrapper_prefixes_are_stripped():
    llama = ["model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight"]
    tied = ["model.embed_tokens.weight", "model.norm.weight"]
    assert ds._hf_prefix(["module." + n for n in llama]) == "module."
    assert ds._hf_prefix(["model." + n for n in llama]) == "model."  # OpenRLHF's Actor.model
    assert ds._hf_prefix(["model." + n for n in tied]) == "model."
    assert ds._hf_prefix(tied) == "" and ds._hf_prefix(llama) == ""
    assert ds._hf_prefix(["model.transformer.h.0.attn.c_attn.weight"]) == "model."


@pytest.mark.parametrize("run", ["z2", "z3"])  # OpenRLHF run root (holds _actor/), HF Trainer checkpoint-N/ layout
def test_analyze_tables_equal_the_same_run_in_safetensors(ds_runs, run, tmp_path):
    from format_tables import assert_same_tables

    assert_same_tables(ds_runs / f"{run}-hf", ds_runs / "base", [ds_runs / run], tmp_path / "out")


def test_cli_end_to_end_and_ds_weights(ds_runs, tmp_path):
    from opd_dynamics.table import load

    cli = [sys.executable, "-m", "opd_dynamics_cli.app", "analyze"]
    env = {**_env(), "PYTHONPATH": os.environ.get("PYTHONPATH", str(HERE.parent))}
    for weights in ("fp32", "module"):
        out = tmp_path / weights
        p = subprocess.run(list(map(str, [*cli, ds_runs / "z2bf16", "--base", ds_runs / "base", "-o", out, "-q",
                                          "--ds-weights", weights])), capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
    fp32, mod = load(tmp_path / "fp32"), load(tmp_path / "module")
    assert len(fp32) == len(mod) and not np.allclose(fp32["value"], mod["value"], equal_nan=True)
    p = subprocess.run(list(map(str, [*cli, ds_runs / "z2bf16", "--base", ds_runs / "base", "--ds-weights", "bf16"])),
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2 and "unknown DeepSpeed weights 'bf16'" in p.stderr and len(p.stderr.strip().splitlines()) == 1


def test_discovery_finds_trainer_and_openrlhf_runs(ds_runs):
    from opd_dynamics.io.discovery import find_steps

    assert find_steps(ds_runs / "trainer_z3") == {s: tag(ds_runs, "trainer_z3", s) for s in STEPS}
    assert find_steps(ds_runs / "z3bf16") == {s: tag(ds_runs, "z3bf16", s) for s in STEPS}
    assert find_steps(ds_runs / "z3bf16" / "_actor") == {s: tag(ds_runs, "z3bf16", s) for s in STEPS}
