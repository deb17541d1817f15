"""The one detection registry: which checkpoint format a step directory holds, and its reader.

``FORMATS`` is an ordered list of format modules; the first whose ``detect(step_dir)`` answers a directory wins,
so the order is a preference: HF weights before trainer shards when a step holds both, except DeepSpeed, whose
fp32 master weights win over the 16-bit ``model.safetensors`` HF Trainer saves beside them. Each module exposes::

    FORMAT = "verl-fsdp"                                   # the reader's .format
    def detect(step_dir: Path) -> Path | None              # file names only, no unpickling; detect(detect(d)) == detect(d)
    def open(path, *, allow_pickle=False, base_config=None) -> Reader
    NEEDS_BASE = True                                      # optional: open() also takes base= (the base Reader)
    OPTIONS = ("scaling",)                                 # optional: the open() settings it takes from **options

Adding a format is one module under ``opd_dynamics/io/formats/`` and one line in ``FORMATS``.
See ``docs/layouts.md`` for every layout, what is read and the dtype that reaches the metrics.

>>> import tempfile, torch, safetensors.torch as st, os
>>> from pathlib import Path
>>> d = Path(tempfile.mkdtemp()); (d / "actor" / "huggingface").mkdir(parents=True)
>>> st.save_file({"w": torch.ones(2)}, d / "actor" / "huggingface" / "model.safetensors")
>>> fmt, where = detect(d); fmt.FORMAT, where.relative_to(d).as_posix(), open(d).keys()
('safetensors', 'actor/huggingface', ['w'])
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

from ...errors import CheckpointError
from ..reader import Reader
from ..storage import as_path, is_remote
from . import dcp, deepspeed, megatron, nemo_rl, peft, safetensors, verl_fsdp

FORMATS: tuple[ModuleType, ...] = (deepspeed, safetensors, peft, verl_fsdp, nemo_rl, megatron, dcp)

#: formats whose readers take their bytes from a Storage (docs/remote.md), so they also read s3://, hf://, …;
#: the others are detected remotely (file names only) and then refused with the reason
REMOTE_READY = frozenset({"safetensors", "peft-lora"})
_NOT_REMOTE_WHY = {"verl-fsdp": "its rank files are pickles, which cannot be read by byte range",
                   "deepspeed": "its rank files are pickles, which cannot be read by byte range"}


def detect(step_dir: str | Path) -> tuple[ModuleType, Path] | None:
    """(format module, directory holding it) for the first format found under ``step_dir``, else None.

    ``step_dir`` may be remote (a :class:`~opd_dynamics.io.storage.RemotePath` or a URL): formats look at file names
    only, and a remote path answers those from one cached listing per directory (:mod:`opd_dynamics.io.storage`).
    """
    step_dir = as_path(step_dir)
    if not step_dir.is_dir():
        return None
    for fmt in FORMATS:
        where = fmt.detect(step_dir)
        if where is not None:
            return fmt, where
    return None


def names() -> list[str]:
    """The ``FORMAT`` of every registered module, in preference order."""
    return [fmt.FORMAT for fmt in FORMATS]


def open(path: str | Path, *, allow_pickle: bool = False, base_config: dict | None = None,
         base: Reader | None = None, **options) -> Reader:
    """The reader for the checkpoint in (or under) ``path``.

    Args:
        path: a step directory or the directory :func:`detect` answered.
        allow_pickle: also read ``pytorch_model.bin`` (``weights_only=True``; never arbitrary unpickling).
        base_config: the base model's ``config.json``, for formats whose checkpoint lacks one.
        base: the base reader, for partial formats (LoRA adapters).
        options: format-specific settings, each passed to the formats that list it in ``OPTIONS`` and ignored by
            the others (``scaling=`` for LoRA, ``ds_weights=`` for DeepSpeed).
    """
    path = as_path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory", hint="check the path")
    hit = detect(path)
    if hit is None:  # let the HF reader explain what it found instead (shards without index, .pt files, nothing)
        return safetensors.open(path, allow_pickle=allow_pickle, base_config=base_config)
    fmt, where = hit
    if is_remote(where) and fmt.FORMAT not in REMOTE_READY:
        why = _NOT_REMOTE_WHY.get(fmt.FORMAT, "its reader does not read from remote storage yet")
        raise CheckpointError(f"{where}: a {fmt.FORMAT} checkpoint cannot be read from remote storage ({why})",
                              hint="copy it to local disk, or export it to HF safetensors")
    kw = {"base": base} if getattr(fmt, "NEEDS_BASE", False) else {}
    kw.update({k: v for k, v in options.items() if k in getattr(fmt, "OPTIONS", ())})
    return fmt.open(where, allow_pickle=allow_pickle, base_config=base_config, **kw)


__all__ = ["FORMATS", "detect", "names", "open"]
