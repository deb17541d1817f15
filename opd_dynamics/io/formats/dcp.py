"""torch.distributed.checkpoint (DCP) directories: torchtitan, HF Trainer + accelerate FSDP, verl's DCP saves.

Layouts (see ``docs/layouts.md``):

- torchtitan ``run/step-N/``: model FQNs at the top level (older versions nest them as ``{"model": ...}``, i.e.
  ``model.<fqn>``), beside ``optimizer.*``, ``lr_scheduler.*``, ``dataloader.*``, ``train_state``;
- HF Trainer + accelerate FSDP with ``SHARDED_STATE_DICT``: ``run/checkpoint-N/pytorch_model_fsdp_0/`` holding
  ``{"model": model.state_dict()}`` (keys ``model.model.layers…``, ``model.lm_head.weight``); the optimizer is
  in ``optimizer_0/`` and there is no ``config.json`` (the base's is used);
- a DCP directory under ``actor/`` (verl).

Names: DCP records how each flattened key was nested (``planner_data``); a key nested one level under
``"model"`` is the model's own FQN, a top-level key is an FQN, anything deeper (``optimizer.state.…``) is
skipped, as are ``_extra_state`` and non-tensor entries. Without that record, a ``model.`` prefix is dropped
when the keys show the accelerate nesting (``model.model.…`` / ``model.lm_head.…``). Tensors come back in
their stored dtype (torchtitan and accelerate keep fp32), rebuilt from their chunks by :mod:`.dcp_index`.

>>> import tempfile, torch, torch.distributed.checkpoint as dcp, warnings
>>> d = tempfile.mkdtemp()
>>> sd = {"model": {"lm_head.weight": torch.ones(2, 3)}, "optimizer": {"state": {"lm_head.weight": torch.ones(1)}}}
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore"); _ = dcp.save(sd, checkpoint_id=d)
>>> r = open(d); r.format, r.keys(), r.shape("lm_head.weight"), r.get_tensor("lm_head.weight").sum().item()
('dcp', ['lm_head.weight'], (2, 3), 6.0)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ..storage import as_path
from .dcp_index import METADATA, DcpIndex

FORMAT = "dcp"
_SUBDIRS = (".", "pytorch_model_fsdp_0", "actor", "actor/model")
_SKIP_ROOTS = ("optimizer", "optim", "lr_scheduler", "scheduler", "dataloader", "train_state", "rng", "rng_state",
               "extra_state", "trainer_state")


def is_dcp(d: Path) -> bool:
    """A DCP directory (``.metadata`` + ``*.distcp``) that is not Megatron's (``metadata.json``)."""
    return (d / METADATA).is_file() and not (d / "metadata.json").is_file() and any(d.glob("*.distcp"))


def detect(step_dir: Path) -> Path | None:
    """The DCP directory of a step: the step itself, ``pytorch_model_fsdp_0/`` (accelerate) or ``actor/`` (verl)."""
    step_dir = as_path(step_dir)  # a local Path, or a RemotePath answered from listings
    for sub in _SUBDIRS:
        d = step_dir / sub
        if is_dcp(d):
            return d if sub != "." else step_dir
    return None


def open(path: Path, *, allow_pickle: bool = False, base_config: dict | None = None) -> "DcpReader":
    return DcpReader(path, base_config=base_config)


def model_names(index: DcpIndex) -> dict[str, str]:
    """HF name -> flattened DCP key for the model's tensors (optimizer, scheduler, ``_extra_state`` skipped)."""
    keys = list(index.tensors())
    recorded = all(index.planner_path(k) is not None for k in keys)
    strip = not recorded and any(k.startswith(("model.model.", "model.lm_head.")) for k in keys)
    out: dict[str, str] = {}
    for k in keys:
        if recorded:
            p = index.planner_path(k)
            if len(p) == 2 and p[0] == "model" and isinstance(p[1], str):
                name = p[1]
            elif len(p) == 1 and p[0] not in _SKIP_ROOTS:
                name = k
            else:
                continue
        elif k.split(".", 1)[0] in _SKIP_ROOTS:
            continue
        else:
            name = k[len("model."):] if strip and k.startswith("model.") else k
        if name.endswith("_extra_state"):
            continue
        out[name] = k
    return out


def read_config(d: Path) -> dict[str, Any]:
    """``config.json`` beside the DCP files, in the step directory, or in verl's ``huggingface/`` ({} if none)."""
    for p in (d / "config.json", d.parent / "config.json", d / "huggingface" / "config.json",
              d.parent / "huggingface" / "config.json"):
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except json.JSONDecodeError:
                raise CheckpointError(f"{p}: not valid JSON", hint="re-save the model config") from None
    return {}


class DcpReader:
    """One DCP checkpoint behind the reader verbs, one tensor (all its chunks) at a time."""

    format = FORMAT
    partial = False

    def __init__(self, path: str | Path, *, base_config: dict | None = None):
        self.path = Path(path)
        if not is_dcp(self.path):
            raise CheckpointError(f"{self.path}: not a DCP checkpoint (no .metadata + *.distcp)",
                                  hint="point at the directory holding .metadata")
        self.index = DcpIndex(self.path)
        self._names = model_names(self.index)
        if not self._names:
            raise CheckpointError(f"{self.path / METADATA}: no model tensors (only optimizer/scheduler state?)",
                                  hint="point at the model's DCP directory (accelerate: pytorch_model_fsdp_0/)")
        self._config = read_config(self.path) or dict(base_config or {})
        self.reads = 0

    def keys(self) -> list[str]:
        return list(self._names)

    def _meta(self, name: str):
        try:
            return self.index.tensors()[self._names[name]]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r}", hint="check --select or the model family") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._meta(name).size)

    def dtype(self, name: str) -> torch.dtype:
        return self._meta(name).properties.dtype

    def get_tensor(self, name: str) -> torch.Tensor:
        self._meta(name)
        self.reads += 1
        return self.index.read(self._names[name])

    def file_of(self, name: str) -> Path:
        self._meta(name)
        return self.index.files_of(self._names[name])[0]

    def __contains__(self, name: str) -> bool:
        return name in self._names

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "dcp_version": str(getattr(self.index.md, "version", None))}

    def __repr__(self) -> str:
        return f"DcpReader({str(self.path)!r}, tensors={len(self._names)})"
