"""Hugging Face weights: ``model.safetensors``, a sharded index, or ``pytorch_model.bin`` (with ``allow_pickle``).

The reader is :class:`~opd_dynamics.io.checkpoint.Checkpoint`; this module says where such weights sit under a
step directory: the directory itself, or verl's HF export (``actor/huggingface/``, ``actor/``, ``huggingface/``).
"""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import Checkpoint, has_weights

FORMAT = "safetensors"
_NESTED = ("", "actor/huggingface", "actor", "huggingface")


def detect(step_dir: Path) -> Path | None:
    for sub in _NESTED:
        cand = step_dir / sub if sub else step_dir
        if has_weights(cand):
            return cand
    return None


def open(path: Path, *, allow_pickle: bool = False, base_config: dict | None = None) -> Checkpoint:
    return Checkpoint(path, allow_pickle=allow_pickle, base_config=base_config)
