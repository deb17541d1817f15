"""Re-save an HF safetensors run as DCP checkpoints with the real writers, on 2 gloo ranks (FSDP2 on CPU).

Each step's weights are loaded into a tiny ``LlamaForCausalLM``, sharded with ``fully_shard`` (every decoder
layer, then the root) and saved by:

- ``torchtitan``: ``torch.distributed.checkpoint.save`` of ``{**model_sd, "optimizer": …, "lr_scheduler": …,
  "train_state": …}`` into ``run/step-N/`` (torchtitan's flattened layout: model FQNs at the top level);
- ``torchtitan-nested``: the older torchtitan layout, ``{"model": model_sd, "optimizer": …}``;
- ``accelerate``: accelerate's own ``save_fsdp_model`` / ``save_fsdp_optimizer`` with a FSDP2
  ``SHARDED_STATE_DICT`` plugin into ``run/checkpoint-N/pytorch_model_fsdp_0/`` and ``optimizer_0/``
  (no ``config.json``, as HF Trainer leaves it).

The optimizer takes one AdamW step at lr 0 so its state exists and the weights stay bit-identical.
Run as a script (``python dcp_writers.py SRC_RUN DST LAYOUT...``): the ranks are spawned processes.
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, src: str, dst: str, layouts: list[str]) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        src = Path(src)
        for step_dir in sorted(p for p in src.iterdir() if p.name.startswith("checkpoint-")):
            step = int(step_dir.name.split("-")[1])
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(step_dir))
            model.load_state_dict(load_file(step_dir / "model.safetensors"))
            for layer in model.model.layers:
                fully_shard(layer)
            fully_shard(model)
            opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)
            model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
            opt.step()
            for layout in layouts:
                out = Path(dst) / layout
                if layout.startswith("torchtitan"):
                    sd = get_model_state_dict(model)
                    state = {"optimizer": get_optimizer_state_dict(model, opt),
                             "lr_scheduler": {"last_epoch": torch.tensor(step)}, "train_state": {"step": step}}
                    state = {**sd, **state} if layout == "torchtitan" else {"model": sd, **state}
                    dcp.save(state, checkpoint_id=out / "checkpoint" / f"step-{step}")
                elif layout == "accelerate":
                    from accelerate import FullyShardedDataParallelPlugin, PartialState
                    from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

                    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
                    ck = out / f"checkpoint-{step}"
                    save_fsdp_model(plugin, PartialState(), model, ck)
                    save_fsdp_optimizer(plugin, PartialState(), opt, model, ck)
                    if rank == 0:
                        (ck / "trainer_state.json").write_text(json.dumps({"global_step": step}))
                else:
                    raise ValueError(layout)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def write(src_run: Path, dst: Path, layouts: list[str], world: int = 2) -> dict[str, Path]:
    """Write every ``checkpoint-N/`` of ``src_run`` in each layout under ``dst/<layout>/``; return those roots."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(world, _port(), str(src_run), str(dst), list(layouts)), nprocs=world)
    return {layout: Path(dst) / layout for layout in layouts}


if __name__ == "__main__":
    write(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
