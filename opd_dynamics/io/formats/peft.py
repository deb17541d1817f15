"""PEFT LoRA adapters (``adapter_config.json`` + ``adapter_model.safetensors``): a partial reader on top of a base.

The reader is :class:`~opd_dynamics.io.lora.LoraCheckpoint`; it needs the base's reader (``base=``), since an
adapter holds ΔW = s·B·A only for the modules it trains.
"""
from __future__ import annotations

from pathlib import Path

from ...errors import OPDError
from ..lora import LoraCheckpoint, has_adapter
from ..reader import Reader

FORMAT = "peft-lora"
OPTIONS = ("scaling",)
NEEDS_BASE = True  # the registry passes the base reader to open()
_NESTED = ("", "actor/huggingface", "actor", "huggingface")


def detect(step_dir: Path) -> Path | None:
    for sub in _NESTED:
        cand = step_dir / sub if sub else step_dir
        if has_adapter(cand):
            return cand
    return None


def open(path: Path, *, allow_pickle: bool = False, base_config: dict | None = None, base: Reader | None = None,
         scaling: float | None = None) -> LoraCheckpoint:
    if base is None:
        raise OPDError(f"{path}: a LoRA adapter needs the base model it was trained on", hint="pass --base DIR")
    return LoraCheckpoint(path, base, allow_pickle=allow_pickle, scaling=scaling)
