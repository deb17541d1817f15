"""Every ``torch.load`` in opd-dynamics: ``weights_only=True`` under an allowlist that *we* fix, not the process.

``torch.serialization.add_safe_globals`` is process-wide, and libraries widen it on import: ``import megatron.core``
allows ``argparse.Namespace``, ``pathlib.PosixPath``, numpy's ``_reconstruct`` and more; accelerate's ``load`` and
torch's own DTensor module add theirs. A checkpoint we refuse in a clean interpreter would then load in a notebook
that happened to import one of them. :func:`load` therefore swaps torch's allowlist for exactly torch's built-in
weights-only set plus the classes the caller names, and puts the process's list back afterwards (under one lock:
the allowlist is global state, so loads through here run one at a time).

>>> import io, torch, argparse
>>> buf = io.BytesIO(); torch.save({"w": torch.ones(2)}, buf); _ = buf.seek(0)
>>> sorted(load(buf))
['w']
"""
from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import torch

_LOCK = threading.RLock()


def dtensor_classes() -> list[Any]:
    """What a DTensor / DeviceMesh pickle needs: the classes ``torch.distributed.tensor`` allows on import."""
    import torch.distributed.device_mesh as dm
    import torch.distributed.tensor as dt
    from torch.distributed.tensor import _dtensor_spec as spec
    from torch.distributed.tensor import placement_types as pt

    names = [(dt, "DTensor"), (dm, "DeviceMesh"), (spec, "DTensorSpec"), (spec, "TensorMeta"),
             (spec, "ShardOrderEntry"), (pt, "Shard"), (pt, "Replicate"), (pt, "Partial"), (pt, "_StridedShard"),
             (dm, "_FlatLayout"), (dm, "_MeshLayout")]  # the last three are absent from older torch: skipped
    return [c for c in (getattr(m, n, None) for m, n in names) if c is not None]


def load(f: Any, *, allow: Iterable[Any] = (), mmap: bool | None = None) -> Any:
    """``torch.load(f, map_location="cpu", weights_only=True)`` allowing torch's built-ins plus ``allow`` only.

    ``allow`` takes what ``torch.serialization.add_safe_globals`` takes (classes, or ``(class, "module.Name")``
    pairs for stand-ins). Errors are torch's own; callers turn them into one-line :class:`CheckpointError`\\ s.
    """
    kw = {} if mmap is None else {"mmap": mmap}
    ser = torch.serialization
    with _LOCK:
        saved = ser.get_safe_globals()
        ser.clear_safe_globals()
        try:
            ser.add_safe_globals(list(allow))
            return torch.load(f, map_location="cpu", weights_only=True, **kw)
        finally:
            ser.clear_safe_globals()
            ser.add_safe_globals(saved)
