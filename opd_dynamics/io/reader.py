"""The one interface every checkpoint format implements: ``safe_open``'s verbs plus where a tensor lives.

The engine, discovery, interventions and EffOPD replay see checkpoints only through :class:`Reader`; each
format (``opd_dynamics.io.formats``) answers it from its own files, one tensor at a time.

- ``keys()`` are the model's Hugging Face tensor names (``model.layers.0.mlp.up_proj.weight``), so a base
  directory and a training step in another format share keys; optimizer, scheduler, RNG and ``_extra_state``
  entries are never listed.
- ``dtype(name)`` is the dtype that reaches the metrics: stored fp32 stays fp32 (no bf16 cast).
- ``get_tensor(name)`` returns the whole tensor in fresh CPU memory; a reader never loads a file whole to answer.
- ``partial`` is True when the checkpoint holds only some of the base's tensors as *updates* (LoRA adapters).
  A partial reader also has the :class:`Updates` capability: ``get_update(name)`` answers ΔW, dense or
  :class:`~opd_dynamics.linalg.Factored`; :func:`read_state` picks the right verb.
- optional ``identity() -> str``: changes whenever the checkpoint's contents may have (size, mtime, header hash of
  its files); incremental analysis keys cached results on it (:func:`opd_dynamics.io.identity.identity_of` falls
  back to the files directly in ``path``).

>>> import tempfile, torch, safetensors.torch as st, os
>>> from opd_dynamics.io.checkpoint import Checkpoint
>>> d = tempfile.mkdtemp(); st.save_file({"w": torch.ones(2, 3)}, os.path.join(d, "model.safetensors"))
>>> ck = Checkpoint(d); isinstance(ck, Reader), isinstance(ck, Updates), nbytes(ck, "w")
(True, False, 24)
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ..errors import CheckpointError, read_json

if TYPE_CHECKING:
    from ..linalg import Factored


@runtime_checkable
class Reader(Protocol):
    """A checkpoint read one tensor at a time (see the module docstring for the contract)."""

    path: Path       # the directory the checkpoint was opened from
    format: str      # "safetensors", "safetensors-sharded", "bin", "peft-lora", "verl-fsdp", "nemo-rl", ...
    partial: bool    # True when it holds only updates of some of the base's tensors (then it is also Updates)
    reads: int       # tensors read so far (tests count reads)

    def keys(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def dtype(self, name: str) -> torch.dtype: ...

    def get_tensor(self, name: str) -> torch.Tensor: ...

    def file_of(self, name: str) -> Path: ...

    def __contains__(self, name: str) -> bool: ...

    @property
    def config(self) -> dict[str, Any]: ...

    def metadata(self) -> dict[str, str]: ...


@runtime_checkable
class Updates(Protocol):
    """The capability of a partial reader: ΔW of one tensor instead of W_t (LoRA: s·B·A kept factored)."""

    def get_update(self, name: str) -> torch.Tensor | Factored: ...


def read_state(reader: Reader, name: str) -> torch.Tensor | Factored:
    """What the engine reads for one step: W_t, or ΔW (maybe factored) from a partial reader."""
    if reader.partial:
        if not isinstance(reader, Updates):
            raise TypeError(f"{type(reader).__name__} is partial but has no get_update")
        return reader.get_update(name)
    return reader.get_tensor(name)


def nbytes(reader: Reader, name: str) -> int:
    """Bytes of ``name`` as the metrics see it (shape × dtype), from headers only."""
    return math.prod(reader.shape(name)) * reader.dtype(name).itemsize


def read_config(path: Path) -> dict[str, Any]:
    """``config.json`` at ``path`` as a dict ({} when absent); a corrupt file is a one-line error."""
    if not path.exists():
        return {}
    cfg = read_json(path, hint="re-save the model config", error=CheckpointError)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: not a model config (a JSON object)", hint="re-save the model config")
    return cfg
