"""verl FSDP actor shards written by torch's own FSDP (FSDP2 DTensor and FSDP1 ShardedTensor) on 2 gloo CPU ranks."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import opd_dynamics as od
from opd_dynamics.errors import CheckpointError
from opd_dynamics.io import formats
from opd_dynamics.io.checkpoint import Checkpoint
from opd_dynamics.io.formats.verl_fsdp import VerlFsdpCheckpoint, chunk, load_rank_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def verl_runs(tmp_path_factory):
    """{'base', 'hf', 'fsdp2', 'fsdp1', 'nemo'}: one trajectory (vocab 67: uneven shards) as HF safetensors, as verl
    shards (FSDP2 DTensor, FSDP1 ShardedTensor) and as NeMo-RL's per-rank safetensors slices."""
    from opd_dynamics.synthetic import make_synthetic_runs
    from verl_shards import write_verl_runs

    root = tmp_path_factory.mktemp("verl")
    syn = make_synthetic_runs(root / "syn", steps=(1, 2, 4), layers=2, hidden=32, vocab=67, kinds=("opd",))
    outs = write_verl_runs(syn["opd"], {k: root / k for k in ("fsdp2", "fsdp1", "nemo")}, world_size=2)
    return {"base": syn["base"], "hf": syn["opd"], **outs}


@pytest.mark.parametrize("fsdp", ["fsdp2", "fsdp1"])
def test_reader_matches_the_hf_checkpoint_bit_for_bit(verl_runs, fsdp):
    ck = formats.open(verl_runs[fsdp] / "global_step_4")
    hf = Checkpoint(verl_runs["hf"] / "checkpoint-4")
    assert isinstance(ck, VerlFsdpCheckpoint) and ck.format == "verl-fsdp" and ck.world_size == 2
    assert sorted(ck.keys()) == sorted(hf.keys()) and ck.config["vocab_size"] == 67
    for name in hf.keys():
        got = ck.get_tensor(name)
        assert got.dtype == torch.float32 == ck.dtype(name) and torch.equal(got, hf.get_tensor(name)), name
    assert ck.reads == len(hf.keys())


def test_nemo_rl_reader_matches_the_hf_checkpoint(verl_runs):
    from opd_dynamics.io.formats.nemo_rl import SHARDING_KEY
    from opd_dynamics.io.safetensors_file import SafetensorsFile

    step = verl_runs["nemo"] / "step_4"
    module, where = formats.detect(step)
    assert module is formats.nemo_rl and where == step / "policy" / "weights" / "model"
    shards = sorted(p.name for p in where.glob("*.safetensors"))
    assert shards == ["shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    assert SHARDING_KEY in SafetensorsFile(where / shards[1]).metadata()
    ck = formats.open(step)
    hf = Checkpoint(verl_runs["hf"] / "checkpoint-4")
    assert ck.format == "nemo-rl" and sorted(ck.keys()) == sorted(hf.keys()) and ck.config["vocab_size"] == 67
    for name in hf.keys():
        assert ck.dtype(name) == torch.float32 and torch.equal(ck.get_tensor(name), hf.get_tensor(name)), name
    assert ck.bytes_read == sum(hf.get_tensor(n).numel() * 4 for n in hf.keys())  # each slice read once


def test_nemo_rl_missing_shard_is_named(verl_runs, tmp_path):
    d = tmp_path / "step_4"
    shutil.copytree(verl_runs["nemo"] / "step_4", d)
    model = d / "policy" / "weights" / "model"
    (model / "shard-00002-model-00001-of-00001.safetensors").unlink()  # the last rank: shapes shrink
    with pytest.raises(CheckpointError, match=r"weight' has shape \[34, 32\], the base has \[67, 32\]"):
        od.analyze([tmp_path], base=verl_runs["base"], progress=False, device="cpu")
    shutil.copy(verl_runs["nemo"] / "step_4" / "policy" / "weights" / "model" / "shard-00002-model-00001-of-00001.safetensors",
                model)
    (model / "shard-00001-model-00001-of-00001.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard file shard-00001"):
        formats.open(d)


@pytest.mark.parametrize("fsdp", ["fsdp2", "fsdp1", "nemo"])
def test_analyze_tables_identical_to_safetensors(verl_runs, fsdp):
    kw = dict(base=verl_runs["base"], names=["opd"], progress=False, device="cpu")
    want = od.analyze([verl_runs["hf"]], **kw)
    got = od.analyze([verl_runs[fsdp]], **kw)
    key = ["run", "step", "ref_step", "module", "metric"]
    merged = want.merge(got, on=key, suffixes=("_hf", "_verl"), validate="one_to_one")
    assert len(merged) == len(want) == len(got) > 0
    assert sorted(got["step"].unique()) == [1, 2, 4]
    torch.testing.assert_close(torch.tensor(merged["value_verl"].to_numpy()), torch.tensor(merged["value_hf"].to_numpy()),
                               rtol=1e-6, atol=0, equal_nan=True)


def test_uneven_chunks_follow_torch_chunk():
    for extent in (0, 1, 5, 67, 64):
        for n in (1, 2, 3, 4):
            want = [c.shape[0] for c in torch.empty(extent).chunk(n)] if extent else []
            got = [chunk(extent, n, k)[1] for k in range(n)]
            assert got[:len(want)] == want and sum(got) == extent


def _copy_step(verl_runs, tmp_path, fsdp="fsdp2"):
    d = tmp_path / "global_step_4"
    shutil.copytree(verl_runs[fsdp] / "global_step_4", d)
    return d / "actor"


def test_missing_rank_file_and_world_size_mismatch(verl_runs, tmp_path):
    actor = _copy_step(verl_runs, tmp_path)
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 4}))
    with pytest.raises(CheckpointError, match="world_size 4, but the rank files are for world size 2"):
        formats.open(actor)
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 2}))
    (actor / "model_world_size_2_rank_1.pt").unlink()
    with pytest.raises(CheckpointError, match=r"model_world_size_2_rank_1\.pt: missing rank file"):
        formats.open(actor)
    with pytest.raises(CheckpointError, match="missing rank file"):  # also through discovery
        od.open_run(tmp_path, base=verl_runs["base"])


class TrainerState:  # what a pickle that needs code looks like: a class of the training framework
    def __init__(self):
        self.epoch = 3


def test_pickle_needing_code_names_the_class(verl_runs, tmp_path):
    actor = _copy_step(verl_runs, tmp_path)
    f = actor / "model_world_size_2_rank_0.pt"
    sd = torch.load(f, weights_only=True, map_location="cpu")
    sd["trainer_state"] = TrainerState()
    torch.save(sd, f)
    with pytest.raises(CheckpointError, match=r"needs more than weights to unpickle \(class .*TrainerState\)"):
        formats.open(actor, allow_pickle=True)


def test_unsupported_placement_is_named(verl_runs, tmp_path):
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.placement_types import Partial

    actor = _copy_step(verl_runs, tmp_path)
    for r in range(2):
        f = actor / f"model_world_size_2_rank_{r}.pt"
        sd = torch.load(f, weights_only=True, map_location="cpu")
        t = sd["model.norm.weight"]
        spec = type(t._spec)(t._spec.mesh, (Partial(),), tensor_meta=t._spec.tensor_meta)
        sd["model.norm.weight"] = DTensor(t._local_tensor.repeat(2)[:32], spec, requires_grad=False)
        torch.save(sd, f)
    ck = formats.open(actor)
    with pytest.raises(CheckpointError, match=r"model.norm.weight' is placed Partial\(sum\)"):
        ck.get_tensor("model.norm.weight")


def test_cuda_pickled_rank_files_load_on_cpu(verl_runs, tmp_path):
    """Files saved on CUDA ranks record 'cuda:R' storages and a 'cuda' mesh: read them with map_location=cpu."""
    actor = _copy_step(verl_runs, tmp_path)
    code = textwrap.dedent(f"""
        import torch, torch.distributed.tensor, torch.serialization as ser
        ser.register_package(1, lambda obj: "cuda:0" if obj.device.type == "cpu" else None, lambda obj, loc: None)
        for r in range(2):
            f = "{actor}/model_world_size_2_rank_%d.pt" % r
            sd = torch.load(f, weights_only=True, map_location="cpu")
            for v in sd.values():
                v.device_mesh._device_type = "cuda"
            torch.save(sd, f)
        try:
            torch.load(f, weights_only=True)
        except RuntimeError as e:
            assert "CUDA" in str(e), e
        else:
            raise SystemExit("the file did not record CUDA storage")
    """)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    ck = formats.open(actor)
    hf = Checkpoint(verl_runs["hf"] / "checkpoint-4")
    assert all(torch.equal(ck.get_tensor(n), hf.get_tensor(n)) for n in hf.keys())


def test_one_tensor_touches_only_its_shards(verl_runs):
    ck = formats.open(verl_runs["fsdp2"] / "global_step_4")
    name = "model.layers.0.self_attn.k_proj.weight"
    ck.get_tensor(name)
    assert ck.bytes_read == 16 * 32 * 4  # its two shards, nothing else of the 60 KB rank files


def test_reading_keeps_rss_near_one_tensor_never_a_rank_file(verl_runs, tmp_path):
    """2 ranks x 64 MB of real DTensor shards: one read, and a read of every tensor, stay far below one rank file.

    The same reads with the page release switched off grow RSS by the whole checkpoint (the control).
    """
    code = textwrap.dedent(f"""
        import gc, os, torch, torch.distributed.tensor
        from torch.distributed.tensor import DTensor
        from torch.distributed.tensor._dtensor_spec import TensorMeta
        from opd_dynamics.engine import limit_heap_growth
        from opd_dynamics.io import formats
        from opd_dynamics.io.formats import verl_fsdp
        limit_heap_growth()  # as run_metrics does: freed tensors go back to the OS
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        tpl = torch.load("{verl_runs['fsdp2']}/global_step_1/actor/model_world_size_2_rank_0.pt", weights_only=True)
        spec0 = tpl["model.layers.0.mlp.up_proj.weight"]._spec
        d = "{tmp_path}/global_step_1/actor"; os.makedirs(d)
        names = ["model.layers.%d.mlp.up_proj.weight" % i for i in range(8)]
        for r in range(2):
            sd = {{}}
            for i, n in enumerate(names):   # 16 MB each, 8 MB per rank
                meta = TensorMeta(torch.Size([2048, 2048]), (2048, 1), torch.float32)
                spec = type(spec0)(spec0.mesh, spec0.placements, tensor_meta=meta)
                sd[n] = DTensor(torch.full((1024, 2048), float(i + r)), spec, requires_grad=False)
            torch.save(sd, d + "/model_world_size_2_rank_%d.pt" % r)
            del sd
        def measure():
            ck = formats.open(d)
            gc.collect()
            base = rss()
            t = ck.get_tensor(names[3])
            one = rss() - base
            assert ck.bytes_read == 2048 * 2048 * 4 and t[0, 0] == 3 and t[-1, 0] == 4
            del t
            peak = 0.0
            for n in names:
                t = ck.get_tensor(n)
                peak = max(peak, rss() - base)
                del t
            return one, peak
        release = verl_fsdp.release
        verl_fsdp.release = lambda t, ranges: False
        control = measure()
        verl_fsdp.release = release
        gc.collect()
        print(*control, *measure())
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    c_one, c_peak, one, peak = map(float, out[-4:])
    assert c_peak > 100, f"control: without the page release RSS grew only {c_peak} MB"
    assert one < 40, f"one 16 MB read grew RSS by {one} MB"          # a rank file is 64 MB
    assert peak < 40, f"reading 128 MB of tensors grew RSS by {peak} MB"  # pages released after each copy
