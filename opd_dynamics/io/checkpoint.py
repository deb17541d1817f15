"""One model directory (a checkpoint or a base model) behind ``safe_open``'s verbs.

Formats, in order of preference inside a directory:

1. ``model.safetensors.index.json`` + the shards it names (only those: a stray ``model.safetensors``
   beside them is ignored),
2. ``model.safetensors``,
3. ``pytorch_model.bin.index.json`` / ``pytorch_model.bin`` — only with ``allow_pickle=True``, and then
   loaded with ``torch.load(weights_only=True, mmap=True)`` so no arbitrary code runs.

>>> import tempfile, torch, safetensors.torch as st, os
>>> d = tempfile.mkdtemp(); st.save_file({"w": torch.ones(2, 3)}, os.path.join(d, "model.safetensors"))
>>> ck = Checkpoint(d); ck.keys(), ck.shape("w"), ck.get_tensor("w").sum().item()
(['w'], (2, 3), 6.0)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, read_json
from .reader import read_config
from .safetensors_file import SafetensorsFile
from . import weights_only
from .storage import as_path, is_remote

ST_INDEX, ST_SINGLE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"
WEIGHT_FILES = (ST_INDEX, ST_SINGLE, BIN_INDEX, BIN_SINGLE)


def has_weights(path: Path) -> bool:
    """Whether ``path`` is a directory holding model weights in a format we know."""
    return path.is_dir() and any((path / f).exists() for f in WEIGHT_FILES)


class Checkpoint:
    """Lazy view of one model directory: names, shapes and dtypes from headers; tensors one at a time."""

    partial = False  # every tensor of the model is here (see opd_dynamics.io.reader)

    def __init__(self, path: str | os.PathLike, *, allow_pickle: bool = False, base_config: dict | None = None):
        self.path = as_path(path)
        self._base_config = dict(base_config or {})
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: no such directory", hint="check the path")
        self.allow_pickle = allow_pickle
        self._files: dict[str, Any] = {}   # file path -> SafetensorsFile | dict of tensors
        self._where: dict[str, Any] = {}    # tensor name -> file path (a Path or a RemotePath)
        self.format = self._open()
        self.reads = 0  # tensors read so far (tests check the engine reads each once)

    # -- the verbs ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        f = self._file(name)
        return f.shape(name) if isinstance(f, SafetensorsFile) else tuple(f[name].shape)

    def dtype(self, name: str) -> torch.dtype:
        f = self._file(name)
        return f.dtype(name) if isinstance(f, SafetensorsFile) else f[name].dtype

    def get_tensor(self, name: str) -> torch.Tensor:
        """The tensor in its stored dtype, in fresh CPU memory."""
        f = self._file(name)
        self.reads += 1
        return f.get_tensor(name) if isinstance(f, SafetensorsFile) else f[name].clone()

    def metadata(self) -> dict[str, str]:
        first = next(iter(self._files.values()), None)
        return first.metadata() if isinstance(first, SafetensorsFile) else {}

    def identity(self) -> str:
        """Name, size, mtime and safetensors header hash of every file read (:mod:`opd_dynamics.io.identity`)."""
        from .identity import files_identity

        extra = [self.path / f for f in (ST_INDEX, BIN_INDEX, "config.json") if (self.path / f).exists()]
        return files_identity([*{str(p): p for p in self._where.values()}.values(), *extra])

    @property
    def config(self) -> dict[str, Any]:
        """``config.json`` of the directory, else ``base_config`` (empty when neither)."""
        return read_config(self.path / "config.json") or dict(self._base_config)

    def file_of(self, name: str) -> Path:
        return self._where[name]

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, format={self.format!r}, tensors={len(self._where)})"

    # -- opening ----------------------------------------------------------------------------------
    def _file(self, name: str):
        try:
            return self._files[str(self._where[name])]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r}", hint="check --select or the model family") from None

    def _open(self) -> str:
        p = self.path
        if (p / ST_INDEX).exists():
            self._open_index(p / ST_INDEX, self._open_safetensors)
            return "safetensors-sharded"
        if (p / ST_SINGLE).exists():
            self._open_safetensors(p / ST_SINGLE)
            return "safetensors"
        if (p / BIN_INDEX).exists() or (p / BIN_SINGLE).exists():
            if is_remote(p):
                raise CheckpointError(f"{p}: holds only pickled weights (pytorch_model.bin), which cannot be read "
                                      "by byte range from remote storage",
                                      hint="convert the checkpoint to safetensors, or copy it to local disk")
            if not self.allow_pickle:
                raise CheckpointError(f"{p}: holds only pickle weights (pytorch_model.bin)",
                                      hint="pass --allow-pickle to load them with weights_only=True, or convert to safetensors")
            if (p / BIN_INDEX).exists():
                self._open_index(p / BIN_INDEX, self._open_bin)
                return "bin-sharded"
            self._open_bin(p / BIN_SINGLE)
            return "bin"
        shards = sorted(x.name for x in p.glob("*.safetensors"))
        if shards:
            raise CheckpointError(f"{p}: has {len(shards)} .safetensors shard(s) but no {ST_INDEX}",
                                  hint="restore the index file that names the shards")
        if any(p.glob("*.pt")) or any(p.glob("*.distcp")):
            raise CheckpointError(f"{p}: holds trainer state (.pt/.distcp files) in no layout opd-dynamics knows",
                                  hint="see docs/layouts.md for the layouts read in place, or merge it to HF format")
        raise CheckpointError(f"{p}: no model weights (expected {ST_SINGLE} or {ST_INDEX})",
                              hint="point at a checkpoint directory")

    def _open_index(self, index: Path, open_one) -> None:
        weight_map = read_json(index, hint="re-save the checkpoint", error=CheckpointError)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: corrupt index (no 'weight_map' of tensor -> file)",
                                  hint="re-save the checkpoint")
        by_file: dict[str, list[str]] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, []).append(name)
        for fname, names in by_file.items():
            shard = index.parent / fname
            if not shard.exists():
                raise CheckpointError(f"{shard}: missing shard named in {index.name} "
                                      f"({len(names)} tensors, e.g. {names[0]!r})", hint="copy the missing shard")
            open_one(shard, only=set(names))

    def _open_safetensors(self, path: Path, only: set[str] | None = None) -> None:
        f = SafetensorsFile(path)
        self._files[str(path)] = f
        keys = set(f.keys())
        if only is not None and not only <= keys:
            missing = sorted(only - keys)
            raise CheckpointError(f"{path}: index names {len(missing)} tensor(s) not in this shard, e.g. {missing[0]!r}",
                                  hint="the shard and its index disagree; re-save the checkpoint")
        for k in f.keys() if only is None else sorted(only):
            self._where[k] = path

    def _open_bin(self, path: Path, only: set[str] | None = None) -> None:
        try:
            sd = weights_only.load(path, mmap=True)
        except Exception as e:  # the unpickler refuses anything but tensors; say so in one line
            raise CheckpointError(f"{path}: cannot load safely ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                                  hint="this file needs code to unpickle; convert it to safetensors in a trusted environment") from None
        if not isinstance(sd, dict):
            raise CheckpointError(f"{path}: not a state dict", hint="save model.state_dict()")
        self._files[str(path)] = sd
        for k, v in sd.items():
            if isinstance(v, torch.Tensor) and (only is None or k in only):
                self._where[k] = path
