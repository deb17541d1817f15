"""Write a run's HF checkpoints again as verl's FSDP actor writes them, with torch's own FSDP on gloo CPU ranks.

verl (``verl/utils/checkpoint/fsdp_checkpoint_manager.py``) saves, on every rank, ``torch.save(model.state_dict())``
taken under a sharded state-dict config to ``global_step_N/actor/model_world_size_W_rank_R.pt``, plus
``fsdp_config.json`` and the HF config in ``actor/huggingface/``. FSDP2 (``fully_shard``) and FSDP1 given a device
mesh store DTensors placed ``Shard(0)``; FSDP1 without a mesh stores ``ShardedTensor``.

NeMo-RL (``kind="nemo"``): the FSDP2 state dict saved with torch's ``HuggingFaceStorageWriter(path,
save_distributed=True)`` into ``step_N/policy/weights/model/`` (one ``shard-0000R-model-00001-of-00001.safetensors``
per rank, ``DCP_SHARDING_INFO`` in each header), ``.hf_metadata/config.json`` beside them.

Run as a script for the bench: ``python tests/verl_shards.py HF_RUN OUT --world-size 4``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, steps: dict[int, str], outs: dict[str, str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for (kind, out), (step, src) in ((o, s) for o in outs.items() for s in steps.items()):
            fsdp = 1 if kind == "fsdp1" else 2
            cfg = AutoConfig.from_pretrained(src)
            model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            model.load_state_dict(load_file(Path(src) / "model.safetensors"), strict=False)
            if fsdp == 2:
                from torch.distributed.fsdp import fully_shard
                for layer in model.model.layers:
                    fully_shard(layer)
                fully_shard(model)
                sd = model.state_dict()
                if kind == "nemo":
                    import torch.distributed.checkpoint as dcp
                    from torch.distributed.checkpoint import HuggingFaceStorageWriter
                    where = Path(out) / f"step_{step}" / "policy" / "weights" / "model"
                    where.mkdir(parents=True, exist_ok=True)
                    dcp.save(sd, storage_writer=HuggingFaceStorageWriter(str(where), save_distributed=True))
                    if rank == 0:
                        (where / ".hf_metadata").mkdir(exist_ok=True)
                        shutil.copy(Path(src) / "config.json", where / ".hf_metadata" / "config.json")
                    dist.barrier()
                    continue
            else:
                from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
                from torch.distributed.fsdp import ShardedStateDictConfig, StateDictType
                model = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)
                with FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT,
                                          ShardedStateDictConfig(offload_to_cpu=True)):
                    sd = model.state_dict()
            actor = Path(out) / f"global_step_{step}" / "actor"
            actor.mkdir(parents=True, exist_ok=True)
            torch.save(sd, actor / f"model_world_size_{world}_rank_{rank}.pt")
            torch.save({"fake_optimizer": torch.zeros(1)}, actor / f"optim_world_size_{world}_rank_{rank}.pt")
            if rank == 0:
                (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": fsdp, "world_size": world}))
                hf = actor / "huggingface"
                hf.mkdir(exist_ok=True)
                shutil.copy(Path(src) / "config.json", hf / "config.json")
            dist.barrier()
    finally:
        dist.destroy_process_group()


def write_verl_runs(hf_run: Path, outs: dict[str, Path], *, world_size: int = 2) -> dict[str, Path]:
    """Re-save every ``checkpoint-N/`` of ``hf_run`` for each {kind: out}: "fsdp2"/"fsdp1" as verl's
    ``out/global_step_N/actor/``, "nemo" as NeMo-RL's ``out/step_N/policy/weights/model/``."""
    steps = {int(d.name.split("-")[1]): str(d) for d in sorted(Path(hf_run).glob("checkpoint-*"))}
    mp.spawn(_rank, args=(world_size, _free_port(), steps, {k: str(v) for k, v in outs.items()}),
             nprocs=world_size, join=True)
    for out in outs.values():
        (Path(out) / "latest_checkpointed_iteration.txt").write_text(str(max(steps)))
    return outs


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("hf_run"), ap.add_argument("out")
    ap.add_argument("--world-size", type=int, default=4), ap.add_argument("--kind", default="fsdp2")
    a = ap.parse_args()
    write_verl_runs(Path(a.hf_run), {a.kind: Path(a.out)}, world_size=a.world_size)
    sys.exit(0)
