"""Write a state dict as the layouts real trainers produce (sharded with index, single file, .bin)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def reshard(src: Path, dst: Path, n_shards: int = 3, *, stray: bool = False) -> Path:
    """Copy a single-file checkpoint into ``n_shards`` shards + ``model.safetensors.index.json``."""
    dst.mkdir(parents=True, exist_ok=True)
    sd = load_file(src / "model.safetensors")
    names = list(sd)
    weight_map = {}
    for i in range(n_shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        chunk = {k: sd[k].contiguous() for k in names[i::n_shards]}
        save_file(chunk, dst / fname, metadata={"format": "pt"})
        weight_map.update({k: fname for k in chunk})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    for extra in ("config.json", "trainer_state.json"):
        if (src / extra).exists():
            shutil.copy(src / extra, dst / extra)
    if stray:  # a stale single-file copy with different values must be ignored when an index exists
        save_file({k: v + 1 for k, v in sd.items()}, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def to_bin(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    torch.save(load_file(src / "model.safetensors"), dst / "pytorch_model.bin")
    shutil.copy(src / "config.json", dst / "config.json")
    return dst
