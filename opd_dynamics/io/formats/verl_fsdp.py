"""verl's FSDP actor shards: ``global_step_N/actor/model_world_size_W_rank_R.pt``, reassembled one tensor at a time.

Each rank file is ``torch.save(model.state_dict())`` taken under a sharded state-dict config (verl's
``fsdp_checkpoint_manager.py``): FSDP2 and FSDP1 with a device mesh store DTensors (``Shard(0)`` on the
``("fsdp",)`` or ``("ddp", "fsdp")`` mesh), FSDP1 without a mesh stores ``ShardedTensor``. ``fsdp_config.json``
gives ``FSDP_version`` and ``world_size``; names and ``config.json`` come from ``actor/huggingface/`` (else the base's).

Every rank file is opened with ``torch.load(mmap=True, weights_only=True, map_location="cpu")`` after importing
``torch.distributed.tensor`` (so DTensors unpickle under ``weights_only``; CUDA-pickled files load on a CPU-only
machine). No process group, no whole-file load: a tensor is assembled by copying each rank's local piece into its
place (offsets from the placements and the rank's mesh coordinate, uneven last chunks as ``torch.chunk`` makes
them), and the pages it came from are given back (:mod:`._mmap`). Values keep their stored dtype (fp32 by default;
verl's own merger casts to bf16, this reader never does). Optimizer and extra-state files are not opened.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from .. import weights_only
from ..reader import read_config
from . import _sharded_tensor
from ._mmap import mappings, release

FORMAT = "verl-fsdp"
_RANK_FILE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
_WRAPPERS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def detect(step_dir: Path) -> Path | None:
    for cand in (step_dir, step_dir / "actor"):
        if cand.is_dir() and any(_RANK_FILE.match(p.name) for p in cand.iterdir()):
            return cand
    return None


def open(path: Path, *, allow_pickle: bool = False, base_config: dict | None = None) -> VerlFsdpCheckpoint:
    return VerlFsdpCheckpoint(path, base_config=base_config)


@contextlib.contextmanager
def _quiet():
    """DeviceMesh warns when it is unpickled without process groups; that is expected here."""
    log = logging.getLogger("torch.distributed.device_mesh")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def load_rank_file(f: Path, fix: str) -> dict:
    """``torch.load`` one rank file lazily (mmap) and safely (weights only); a refused class is named."""
    try:
        with _quiet():
            try:
                return weights_only.load(f, allow=weights_only.dtensor_classes(), mmap=True)
            except pickle.UnpicklingError as e:
                if "torch.distributed._shard" not in str(e):
                    raise
                return _sharded_tensor.load(f)  # FSDP1 ShardedTensors: a fixed allowlist of inert stand-ins
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"class {m.group(1)}" if m else str(e).splitlines()[0][:160]
        raise CheckpointError(f"{f}: needs more than weights to unpickle ({what})",
                              hint=fix + "; opd-dynamics never unpickles arbitrary classes, --allow-pickle included") from None
    except (RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{f}: cannot load ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                              hint="re-copy the file; it may be truncated") from None


def chunk(extent: int, n: int, k: int) -> tuple[int, int]:
    """(start, size) of chunk ``k`` of ``n`` along an axis of ``extent``, as ``torch.chunk``/DTensor ``Shard`` split.

    >>> [chunk(67, 4, k) for k in range(4)], chunk(2, 4, 3)
    ([(0, 17), (17, 17), (34, 17), (51, 16)], (2, 0))
    """
    step = math.ceil(extent / n) if n else 0
    start = min(k * step, extent)
    return start, min(extent, start + step) - start


class VerlFsdpCheckpoint:
    """The W rank files of one verl FSDP actor checkpoint behind the Reader verbs."""

    partial = False
    format = FORMAT

    def __init__(self, path: str | Path, *, base_config: dict | None = None):
        self.path = Path(path)
        self.reads = 0
        self.bytes_read = 0  # bytes copied out of rank files (tests check a read touches only its shards)
        self._base_config = dict(base_config or {})
        self.world_size = self._world_size()
        self._files = [self.path / f"model_world_size_{self.world_size}_rank_{r}.pt" for r in range(self.world_size)]
        for f in self._files:
            if not f.exists():
                raise CheckpointError(f"{f}: missing rank file ({self.world_size} ranks expected, "
                                      f"{sum(g.exists() for g in self._files)} present)", hint="copy every rank's file")
        self._sds = [load_rank_file(f, "re-save the actor with verl's FSDP checkpoint manager") for f in self._files]
        self._maps = [mappings(f) for f in self._files]
        self._names: dict[str, str] = {}  # HF name -> key in the rank files
        for key, v in self._sds[0].items():
            if isinstance(v, (torch.Tensor, _sharded_tensor.ShardedTensorStub)):
                name = key
                for w in _WRAPPERS:
                    name = name.replace(w, "")
                self._names[name] = key

    # -- the verbs ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entry(0, name).shape)

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(0, name).dtype

    def file_of(self, name: str) -> Path:
        return self._files[0]

    def metadata(self) -> dict[str, str]:
        return {"world_size": str(self.world_size), **{k: str(v) for k, v in self._fsdp_config().items()}}

    @property
    def config(self) -> dict[str, Any]:
        return read_config(self.path / "huggingface" / "config.json") or dict(self._base_config)

    def get_tensor(self, name: str) -> torch.Tensor:
        """The whole tensor in its stored dtype, copied rank by rank into fresh CPU memory."""
        first = self._entry(0, name)
        out = torch.empty(tuple(first.shape), dtype=first.dtype)
        done: set[tuple] = set()
        filled = 0
        for r in range(self.world_size):
            t = self._entry(r, name)
            for local, region in self._pieces(t, r, name):
                key = tuple((s.start, s.stop) for s in region)
                if key in done:  # the same piece replicated on another mesh dimension (HSDP)
                    continue
                done.add(key)
                with _quiet():
                    out[region].copy_(local)
                filled += local.numel()
                self.bytes_read += local.numel() * local.element_size()
                release(local, self._maps[r])
        if filled != out.numel():
            raise CheckpointError(f"{self.path}: the rank files cover {filled} of the {out.numel()} elements of "
                                  f"{name!r}", hint="copy every rank's file of this checkpoint")
        self.reads += 1
        return out

    def __repr__(self) -> str:
        return f"VerlFsdpCheckpoint({str(self.path)!r}, world_size={self.world_size}, tensors={len(self._names)})"

    # -- internals --------------------------------------------------------------------------------
    def _entry(self, r: int, name: str):
        try:
            return self._sds[r][self._names[name]]
        except KeyError:
            where = self._files[r] if name in self._names else self.path
            raise CheckpointError(f"{where}: no tensor {name!r}", hint="check --select or that every rank file "
                                  "belongs to the same checkpoint") from None

    def _pieces(self, t: torch.Tensor, r: int, name: str):
        """(local tensor, region of the global tensor) pairs that rank ``r``'s file holds for one tensor."""
        from torch.distributed.tensor import DTensor

        if isinstance(t, DTensor):
            return [(t._local_tensor, self._dtensor_region(t, r, name))]
        if isinstance(t, _sharded_tensor.ShardedTensorStub):
            return [(s.tensor, tuple(slice(o, o + n) for o, n in zip(s.metadata.shard_offsets, s.metadata.shard_sizes)))
                    for s in t.local_shards()]
        return [(t, tuple(slice(0, n) for n in t.shape))]  # a plain tensor: every rank holds all of it

    def _dtensor_region(self, t, r: int, name: str) -> tuple[slice, ...]:
        from torch.distributed.tensor import Replicate, Shard

        mesh = t.device_mesh.mesh
        if mesh.numel() != self.world_size:
            raise CheckpointError(f"{self._files[r]}: {name!r} is placed on a mesh of {mesh.numel()} ranks, but "
                                  f"{self.world_size} rank files are present", hint="copy every rank's file")
        coord = (mesh == r).nonzero()
        if len(coord) != 1:
            raise CheckpointError(f"{self._files[r]}: rank {r} is not in the device mesh of {name!r}",
                                  hint="the rank files come from different runs; re-copy them")
        coord = coord[0].tolist()
        start, size = [0] * t.ndim, list(t.shape)
        for i, pl in enumerate(t.placements):
            if type(pl) is Replicate:
                continue
            if type(pl) is not Shard:  # _StridedShard (FSDP + tensor parallel), Partial, ...
                raise CheckpointError(f"{self._files[r]}: {name!r} is placed {pl!r} on mesh dimension {i}, which "
                                      "this reader cannot reassemble (only Shard and Replicate)",
                                      hint="merge this checkpoint with the training framework's own tools")
            off, n = chunk(size[pl.dim], mesh.shape[i], coord[i])
            start[pl.dim] += off
            size[pl.dim] = n
        if list(t._local_tensor.shape) != size:
            raise CheckpointError(f"{self._files[r]}: {name!r} holds a {list(t._local_tensor.shape)} piece where "
                                  f"{t.placements} on this mesh gives {size}", hint="re-copy the rank files")
        return tuple(slice(a, a + n) for a, n in zip(start, size))

    def _world_size(self) -> int:
        found: dict[int, set[int]] = {}
        for p in self.path.iterdir():
            m = _RANK_FILE.match(p.name)
            if m:
                found.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
        if not found:
            raise CheckpointError(f"{self.path}: no model_world_size_W_rank_R.pt files", hint="point at verl's actor/")
        if len(found) > 1:
            raise CheckpointError(f"{self.path}: rank files of several world sizes ({sorted(found)})",
                                  hint="keep the files of one save only")
        (world,) = found
        cfg = self._fsdp_config().get("world_size")
        if cfg is not None and int(cfg) != world:
            raise CheckpointError(f"{self.path / 'fsdp_config.json'}: world_size {cfg}, but the rank files are "
                                  f"for world size {world}", hint="copy the rank files of the same save")
        return world

    def _fsdp_config(self) -> dict:
        p = self.path / "fsdp_config.json"
        try:
            return json.loads(p.read_text()) if p.exists() else {}
        except json.JSONDecodeError:
            raise CheckpointError(f"{p}: not valid JSON", hint="re-save the checkpoint") from None
