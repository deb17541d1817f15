"""A PEFT LoRA adapter directory read as a checkpoint: ΔW = s·B·A per module, kept in factored form.

Files: ``adapter_config.json`` + ``adapter_model.safetensors`` (``adapter_model.bin`` only with
``allow_pickle=True``, loaded with ``weights_only=True``). Keys are PEFT's, adapter name removed:

- ``base_model.model.<module>.lora_A.weight`` (r, in) and ``.lora_B.weight`` (out, r): ΔW = s·B·A in the
  ``nn.Linear`` orientation; with ``fan_in_fan_out`` (GPT-2 ``Conv1D``, stored (in, out)) the stored tensor
  moves by (s·B·A)ᵀ.
- ``<module>.lora_embedding_A`` (r, vocab) and ``.lora_embedding_B`` (dim, r): ΔW = s·(B·A)ᵀ (vocab, dim).
- ``<module>.base_layer.weight`` (an embedding saved with ``save_embedding_layers``) and ``modules_to_save``
  tensors (``<module>.weight``): full weights W_t, not deltas (plus s·B·A when the module also has LoRA factors).

Scaling s = α/r, or α/√r with ``use_rslora``; r and α per module from ``rank_pattern`` / ``alpha_pattern``
(keys matched as PEFT does: ``re.match(rf"(.*\\.)?({key})$", module)``). ``lora_alpha: 0`` makes every update
zero, which is never what was trained: the reader stops and asks for the scaling (``scaling=``).

The base W₀ is ``base_model_name_or_path`` when that is a local directory, else ``--base``. DoRA adapters are
refused (their update is not s·B·A).

>>> import tempfile, json, os, torch, safetensors.torch as st
>>> from opd_dynamics.io.checkpoint import Checkpoint
>>> d = tempfile.mkdtemp(); b = os.path.join(d, "base"); a = os.path.join(d, "ad"); os.makedirs(b); os.makedirs(a)
>>> st.save_file({"m.q.weight": torch.zeros(3, 2)}, os.path.join(b, "model.safetensors"))
>>> st.save_file({"base_model.model.m.q.lora_A.weight": torch.ones(1, 2),
...               "base_model.model.m.q.lora_B.weight": torch.ones(3, 1)}, os.path.join(a, "adapter_model.safetensors"))
>>> _ = open(os.path.join(a, "adapter_config.json"), "w").write(json.dumps({"r": 1, "lora_alpha": 2, "peft_type": "LORA"}))
>>> ck = LoraCheckpoint(a, Checkpoint(b)); ck.keys(), ck.get_update("m.q.weight").dense().tolist()
(['m.q.weight'], [[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]])
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, OPDError, read_json
from ..linalg import Factored
from .checkpoint import Checkpoint, has_weights
from .safetensors_file import SafetensorsFile
from . import weights_only
from .storage import as_path, is_remote

ADAPTER_CONFIG, ADAPTER_ST, ADAPTER_BIN = "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"
PREFIX = "base_model.model."
_LORA = re.compile(r"^(?P<mod>.+)\.lora_(?P<emb>embedding_)?(?P<ab>[AB])"
                   r"(?:\.(?!weight$|bias$)(?P<adapter>[^.]+))?(?P<tail>\.weight|\.bias)?$")


def has_adapter(path: Path) -> bool:
    """Whether ``path`` is a directory holding a PEFT adapter."""
    return path.is_dir() and (path / ADAPTER_CONFIG).exists() and (
        (path / ADAPTER_ST).exists() or (path / ADAPTER_BIN).exists())


def pattern_value(patterns: dict[str, Any] | None, module: str, default):
    """PEFT's ``get_pattern_key``: the first pattern p with ``re.match(rf"(.*\\.)?({p})$", module)`` wins.

    >>> pattern_value({"q_proj": 8}, "model.layers.0.self_attn.q_proj", 4), pattern_value({"q_proj": 8}, "x.k_proj", 4)
    (8, 4)
    """
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter_config(path: Path) -> dict[str, Any]:
    p = path / ADAPTER_CONFIG
    cfg = read_json(p, hint="re-save the adapter", error=CheckpointError)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{p}: not an adapter config (a JSON object)", hint="re-save the adapter")
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise CheckpointError(f"{p}: peft_type {peft_type!r} is not LoRA", hint="only LoRA adapters can be analysed")
    if cfg.get("use_dora"):
        raise CheckpointError(f"{p}: a DoRA adapter (use_dora: true); its update is not s·B·A",
                              hint="merge it into the base model and analyse the merged checkpoints")
    return cfg


def base_of(adapter_dir: Path) -> Path:
    """The local base-model directory an adapter names in ``base_model_name_or_path``, or a clear error."""
    name = read_adapter_config(adapter_dir).get("base_model_name_or_path")
    for cand in ([Path(name), adapter_dir / name, adapter_dir.parent / name, adapter_dir.parent.parent / name]
                 if name else []):
        if has_weights(cand):
            return cand
    raise OPDError(f"{adapter_dir / ADAPTER_CONFIG}: base model {name!r} is not a local model directory",
                   hint="pass --base DIR with the model the adapter was trained on")


@dataclass(frozen=True)
class _Module:
    a: str                 # key of A (r, in) or lora_embedding_A (r, vocab)
    b: str                 # key of B (out, r) or lora_embedding_B (dim, r)
    scale: float
    embedding: bool
    fan_in_fan_out: bool


class LoraCheckpoint:
    """A PEFT adapter directory behind the :class:`~opd_dynamics.io.checkpoint.Checkpoint` verbs, on top of a base.

    ``keys()`` are the base tensors the adapter moves (``partial``: the others stay at W₀ and are not listed).
    ``get_update(name)`` answers a :class:`~opd_dynamics.linalg.Factored` ΔW in the stored orientation, or the full
    tensor for ``modules_to_save`` / ``base_layer`` weights; ``get_tensor(name)`` is the merged W₀ + ΔW, computed
    as PEFT merges it, and W₀ for a base tensor the adapter leaves alone.
    """

    partial = True
    format = "peft-lora"

    def __init__(self, path: str | os.PathLike, base: Checkpoint, *, allow_pickle: bool = False,
                 scaling: float | None = None):
        self.path = as_path(path)
        self.base = base
        self.reads = 0
        self.cfg = read_adapter_config(self.path)
        self._file = self._open(allow_pickle)
        self._modules: dict[str, _Module] = {}
        self._full: dict[str, str] = {}  # base tensor name -> key of its full stored weight
        self._index(scaling)

    # -- the verbs ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return sorted(set(self._modules) | set(self._full))

    def __contains__(self, name: str) -> bool:
        return name in self._modules or name in self._full

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shape(self._full[name]) if name in self._full else self.base.shape(name)

    def dtype(self, name: str) -> torch.dtype:
        if name not in self._full:
            return self.base.dtype(name)
        f, key = self._file, self._full[name]
        return f.dtype(key) if isinstance(f, SafetensorsFile) else f[key].dtype

    def file_of(self, name: str) -> Path:
        return self._path

    def metadata(self) -> dict[str, str]:
        return self._file.metadata() if isinstance(self._file, SafetensorsFile) else {}

    @property
    def config(self) -> dict[str, Any]:
        return self.base.config

    def get_update(self, name: str) -> torch.Tensor | Factored:
        """ΔW = s·B·A as a Factored (stored orientation), or W_t itself for full weights."""
        if name not in self:
            raise CheckpointError(f"{self._path}: the adapter does not move tensor {name!r}", hint="check --select")
        self.reads += 1
        mod = self._modules.get(name)
        fac = None
        if mod is not None:
            a, b = self._raw(mod.a), self._raw(mod.b)
            if mod.embedding:    # ΔW (vocab, dim) = s·(B·A)ᵀ = s·Aᵀ·Bᵀ
                fac = Factored(a.T, b.T, mod.scale)
            else:
                fac = Factored(b, a, mod.scale)
                fac = fac.T if mod.fan_in_fan_out else fac
        if name not in self._full:
            return fac
        full = self._raw(self._full[name])
        return full if fac is None else full.to(torch.float32, copy=True).add_(fac.dense(torch.float32))

    def get_tensor(self, name: str) -> torch.Tensor:
        """W_t merged as PEFT's ``merge_and_unload`` merges: W₀ + transpose?(B @ A)·s in W₀'s float dtype (float32
        at least), so a model built from these tensors is bitwise PEFT's merged model. A base tensor the adapter
        leaves alone is W₀ itself (it did not move)."""
        if name not in self:
            return self.base.get_tensor(name)
        mod = self._modules.get(name)
        if mod is None or name in self._full:
            upd = self.get_update(name)
            return upd if isinstance(upd, torch.Tensor) else upd.dense(torch.float32)
        self.reads += 1
        w0 = self.base.get_tensor(name)
        dtype = w0.dtype if w0.dtype in (torch.float32, torch.float64) else torch.float32
        a, b = self._raw(mod.a).to(dtype), self._raw(mod.b).to(dtype)
        delta = b @ a                                   # PEFT: transpose(B @ A, fan_in_fan_out) * scaling
        if mod.embedding or mod.fan_in_fan_out:
            delta = delta.T
        return w0.to(dtype, copy=True).add_(delta * mod.scale)

    def __repr__(self) -> str:
        return f"LoraCheckpoint({str(self.path)!r}, modules={len(self._modules)}, full={len(self._full)})"

    # -- opening ----------------------------------------------------------------------------------
    def _open(self, allow_pickle: bool):
        st, bin_ = self.path / ADAPTER_ST, self.path / ADAPTER_BIN
        if st.exists():
            self._path = st
            return SafetensorsFile(st)
        if is_remote(bin_):
            raise CheckpointError(f"{bin_}: a pickled adapter cannot be read by byte range from remote storage",
                                  hint="re-save the adapter as safetensors, or copy it to local disk")
        if not allow_pickle:
            raise CheckpointError(f"{bin_}: a pickle adapter (adapter_model.bin)",
                                  hint="pass --allow-pickle to load it with weights_only=True, or re-save as safetensors")
        self._path = bin_
        try:
            sd = weights_only.load(bin_)
        except Exception as e:
            raise CheckpointError(f"{bin_}: cannot load safely ({type(e).__name__})",
                                  hint="re-save the adapter as safetensors in a trusted environment") from None
        return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}

    def _keys(self) -> list[str]:
        return self._file.keys() if isinstance(self._file, SafetensorsFile) else list(self._file)

    def _raw(self, key: str) -> torch.Tensor:
        f = self._file
        return f.get_tensor(key) if isinstance(f, SafetensorsFile) else f[key].clone()

    def _shape(self, key: str) -> tuple[int, ...]:
        f = self._file
        return f.shape(key) if isinstance(f, SafetensorsFile) else tuple(f[key].shape)

    def _target(self, module: str, key: str) -> str:
        name = module + ".weight"
        if name not in self.base:
            raise CheckpointError(f"{self._path}: adapter tensor {key!r} targets {name!r}, which the base "
                                  f"{self.base.path} does not have", hint="pass --base with the model the adapter was trained on")
        return name

    def _index(self, scaling: float | None) -> None:
        pairs: dict[str, dict[str, str]] = {}
        for key in self._keys():
            if not key.startswith(PREFIX):
                raise CheckpointError(f"{self._path}: key {key!r} lacks PEFT's {PREFIX!r} prefix",
                                      hint="this is not a PEFT LoRA adapter saved by save_pretrained")
            rest = key[len(PREFIX):]
            if "lora_magnitude_vector" in rest:
                raise CheckpointError(f"{self._path}: DoRA tensor {key!r}", hint="merge the adapter and analyse merged checkpoints")
            m = _LORA.match(rest)
            if m:
                if (m["emb"] is None) != (m["tail"] == ".weight"):  # e.g. lora_B.bias (lora_bias=True)
                    raise CheckpointError(f"{self._path}: unsupported LoRA tensor {key!r}",
                                          hint="merge the adapter and analyse merged checkpoints")
                pairs.setdefault(m["mod"], {})[("emb_" if m["emb"] else "") + m["ab"]] = key
                continue
            if ".lora_" in rest:
                raise CheckpointError(f"{self._path}: unsupported LoRA tensor {key!r}",
                                      hint="merge the adapter and analyse merged checkpoints")
            # full weights: modules_to_save (old and new key styles) and an embedding's base_layer
            name = re.sub(r"\.modules_to_save(\.[^.]+)?\.", ".", rest).replace(".base_layer.", ".")
            if name not in self.base:
                raise CheckpointError(f"{self._path}: full tensor {key!r} ({name!r}) is not in the base {self.base.path}",
                                      hint="pass --base with the model the adapter was trained on")
            self._full[name] = key
        for module, ab in pairs.items():
            self._add(module, ab, scaling)

    def _add(self, module: str, ab: dict[str, str], scaling: float | None) -> None:
        embedding = "emb_A" in ab or "emb_B" in ab
        a_key, b_key = (ab.get("emb_A"), ab.get("emb_B")) if embedding else (ab.get("A"), ab.get("B"))
        if a_key is None or b_key is None:
            raise CheckpointError(f"{self._path}: module {module!r} has only one LoRA factor ({sorted(ab.values())})",
                                  hint="re-save the adapter")
        name = self._target(module, a_key)
        r = self._shape(a_key)[0]
        if self._shape(b_key)[-1] != r:
            raise CheckpointError(f"{self._path}: {b_key!r} has shape {list(self._shape(b_key))}, "
                                  f"expected rank {r} from {a_key!r}", hint="re-save the adapter")
        cfg_r = pattern_value(self.cfg.get("rank_pattern"), module, self.cfg.get("r", r))
        if cfg_r != r:
            raise CheckpointError(f"{self._path}: {a_key!r} has rank {r} but adapter_config.json gives r={cfg_r}",
                                  hint="the config and the weights disagree; re-save the adapter")
        if scaling is not None:
            scale = float(scaling)
        else:
            alpha = pattern_value(self.cfg.get("alpha_pattern"), module, self.cfg.get("lora_alpha"))
            if not alpha:
                raise CheckpointError(f"{self.path / ADAPTER_CONFIG}: lora_alpha is {alpha!r} for {module!r}, which "
                                      "would scale every update to zero", hint="pass the scaling used in training "
                                      "(lora_scaling=alpha/r), or put the real lora_alpha in adapter_config.json")
            scale = float(alpha) / (math.sqrt(r) if self.cfg.get("use_rslora") else r)
        fifo = bool(self.cfg.get("fan_in_fan_out", False)) and not embedding
        base_shape = self.base.shape(name)
        if embedding:
            want = (self._shape(a_key)[1], self._shape(b_key)[0])
        else:
            out_in = (self._shape(b_key)[0], self._shape(a_key)[1])
            want = out_in[::-1] if fifo else out_in
        if tuple(base_shape) != want and name not in self._full:
            hint = ("fan_in_fan_out in adapter_config.json does not match the base's layout"
                    if tuple(base_shape) == want[::-1] else "pass --base with the model the adapter was trained on")
            raise CheckpointError(f"{self._path}: LoRA update of {name!r} has shape {list(want)}, the base has "
                                  f"{list(base_shape)}", hint=hint)
        self._modules[name] = _Module(a_key, b_key, scale, embedding, fifo)
