"""The chunk index of a ``torch.distributed.checkpoint`` directory, read one chunk at a time in one process.

A DCP directory holds ``.metadata`` (a pickled ``Metadata``: for each flattened key its dtype, global size and
chunks, and for each chunk ``MetadataIndex(fqn, offsets) -> _StorageInfo(relative_path, offset, length)``) and
``__R_I.distcp`` files, each a concatenation of ``torch.save`` blobs, one per chunk (torch's
``torch/distributed/checkpoint/filesystem.py``). A tensor is rebuilt by reading the byte range of every chunk
that covers it and copying each into place at its offsets; no process group, no whole-file load.

``.metadata`` is unpickled with an allowlist: the DCP metadata dataclasses, ``torch.Size``, dtypes and layouts,
``pathlib`` paths. Classes of modules named in ``stub_modules`` (Megatron's planner data) become inert stubs that
only hold their state; anything else is refused with a one-line error naming the class.

>>> import tempfile, torch, torch.distributed.checkpoint as dcp, warnings
>>> d = tempfile.mkdtemp()
>>> with warnings.catch_warnings():
...     warnings.simplefilter("ignore"); _ = dcp.save({"w": torch.arange(6.).reshape(2, 3)}, checkpoint_id=d)
>>> ix = DcpIndex(d); ix.tensors()["w"].size, ix.read("w").sum().item(), ix.read("w", lead=(1,)).tolist()
(torch.Size([2, 3]), 15.0, [3.0, 4.0, 5.0])
"""
from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from .. import weights_only

METADATA = ".metadata"
_DCP = "torch.distributed.checkpoint."
_ALLOWED = {  # (module, name) that a DCP .metadata may reference; all are plain data holders
    **{(_DCP + "metadata", n): None for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                                              "StorageMeta", "_MEM_FORMAT_ENCODING")},
    **{(_DCP + "filesystem", n): None for n in ("_StorageInfo", "_StoragePrefix")},
    **{(_DCP + "planner", n): None for n in ("LoadItemType", "WriteItemType", "SavePlan", "WriteItem",
                                             "TensorWriteData")},  # Megatron keeps its save plans
    ("torch", "Size"): None, ("torch.serialization", "_get_layout"): None,
    ("pathlib", "PosixPath"): None, ("pathlib", "PurePosixPath"): None, ("pathlib", "WindowsPath"): None,
    ("pathlib", "PureWindowsPath"): None, ("collections", "OrderedDict"): None,
}


class _Stub:
    """Stands in for a class of a library we do not import (Megatron's): keeps its arguments, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, f, path: Path, stub_modules: tuple[str, ...]):
        super().__init__(f)
        self.path, self.stub_modules = path, stub_modules

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith(self.stub_modules):
            return type(name, (_Stub,), {"__module__": module})
        raise CheckpointError(f"{self.path}: unpickling needs {module}.{name}, which is not DCP metadata",
                              hint="this .metadata pickles more than a checkpoint index; it is not read "
                                   "(--allow-pickle does not allow arbitrary classes)")


def read_metadata(path: Path, stub_modules: tuple[str, ...] = ()) -> Any:
    """The ``Metadata`` of a DCP directory, unpickled with the allowlist above."""
    p = Path(path) / METADATA
    try:
        with p.open("rb") as f:
            md = _MetadataUnpickler(f, p, stub_modules).load()
    except FileNotFoundError:
        raise CheckpointError(f"{p}: missing", hint="copy the whole checkpoint directory (.metadata + *.distcp)") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{p}: not a readable DCP index ({type(e).__name__}: {str(e)[:120]})",
                              hint="re-save the checkpoint; the file is truncated or from another tool") from None
    if not hasattr(md, "state_dict_metadata") or not isinstance(getattr(md, "storage_data", None), dict):
        raise CheckpointError(f"{p}: not a DCP Metadata with a storage index",
                              hint="only FileSystemWriter checkpoints (.metadata + __R_I.distcp) are read")
    return md


class _Range(io.RawIOBase):
    """A read-only window [start, start + length) of an open file, as a seekable file of its own."""

    def __init__(self, f, start: int, length: int):
        super().__init__()
        self.f, self.start, self.length, self.pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = (pos, self.pos + pos, self.length + pos)[whence]
        return self.pos

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self.length - self.pos))
        self.f.seek(self.start + self.pos)
        got = self.f.readinto(memoryview(b).cast("B")[:n])
        self.pos += got
        return got


class DcpIndex:
    """Tensors of one DCP directory by flattened key; ``read`` rebuilds one (or one leading-axis slice)."""

    def __init__(self, path: str | Path, *, stub_modules: tuple[str, ...] = ()):
        self.path = Path(path)
        self.md = read_metadata(self.path, stub_modules)
        self._tensors = {k: v for k, v in self.md.state_dict_metadata.items() if hasattr(v, "chunks")}

    def tensors(self) -> dict[str, Any]:
        """Flattened key -> ``TensorStorageMetadata`` (``.size``, ``.properties.dtype``, ``.chunks``)."""
        return self._tensors

    def planner_path(self, key: str) -> tuple | None:
        """The nested path DCP flattened ``key`` from (``("model", "lm_head.weight")``), when recorded."""
        pd = self.md.planner_data
        path = pd.get(key) if isinstance(pd, dict) else None
        return tuple(path) if isinstance(path, (tuple, list)) else None

    def files_of(self, key: str) -> list[Path]:
        return sorted({self.path / self._info(key, c).relative_path for c in self._tensors[key].chunks})

    def read(self, key: str, lead: tuple[int, ...] = ()) -> torch.Tensor:
        """Tensor ``key`` in its stored dtype, or its slice ``[lead]`` on the leading axes (Megatron's layer axis).

        Only the chunks that intersect the slice are read.
        """
        tm = self._tensors[key]
        size, k = tuple(tm.size), len(lead)
        if math.prod(size[k:]) == 0:
            return torch.empty(size[k:], dtype=tm.properties.dtype)
        out, covered = None, 0
        for c in tm.chunks:
            off, sz = tuple(c.offsets), tuple(c.sizes)
            if any(not (o <= i < o + s) for i, o, s in zip(lead, off, sz)):
                continue
            part = self._load(key, c)
            part = part[tuple(i - o for i, o in zip(lead, off))]
            if out is None and sz[k:] == size[k:]:  # one chunk holds it all: no second copy
                return part.clone() if part.untyped_storage().nbytes() != part.nbytes else part
            if out is None:
                out = torch.empty(size[k:], dtype=tm.properties.dtype)
            out[tuple(slice(o, o + s) for o, s in zip(off[k:], sz[k:]))] = part
            covered += part.numel()
        if out is None or covered != out.numel():
            raise CheckpointError(f"{self.path}: chunks of {key!r} cover {covered} of {math.prod(size[k:])} elements",
                                  hint="a rank's chunks are missing from the index; re-save the checkpoint")
        return out

    # -- one chunk ------------------------------------------------------------------------------------
    def _info(self, key: str, chunk) -> Any:
        return self._lookup()[(key, tuple(chunk.offsets))]

    def _lookup(self) -> dict[tuple[str, tuple[int, ...]], Any]:
        if not hasattr(self, "_by_key"):
            self._by_key = {(idx.fqn, tuple(idx.offset or ())): info for idx, info in self.md.storage_data.items()}
        return self._by_key

    def _load(self, key: str, chunk) -> torch.Tensor:
        try:
            info = self._info(key, chunk)
        except KeyError:
            raise CheckpointError(f"{self.path / METADATA}: no storage entry for {key!r} at {list(chunk.offsets)}",
                                  hint="the index is inconsistent; re-save the checkpoint") from None
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"{self.path / info.relative_path}: {key!r} is stored with transforms "
                                  f"{list(info.transform_descriptors)}", hint="re-save without DCP extensions")
        f = self.path / info.relative_path
        try:
            fh = f.open("rb", buffering=0)
        except FileNotFoundError:
            raise CheckpointError(f"{f}: missing rank file (holds {key!r})",
                                  hint="copy every __R_I.distcp file of the checkpoint") from None
        with fh:
            if fh.seek(0, 2) < info.offset + info.length:
                raise CheckpointError(f"{f}: truncated ({key!r} needs bytes {info.offset}..{info.offset + info.length})",
                                      hint="copy the file again")
            try:  # torch.load reads the blob's records straight from the file: one copy, no whole-blob buffer
                t = weights_only.load(_Range(fh, info.offset, info.length))
            except Exception as e:  # noqa: BLE001 - weights_only refuses anything but tensors; say so in one line
                raise CheckpointError(f"{f}: chunk of {key!r} does not load as a tensor ({type(e).__name__})",
                                      hint="only torch_save serialisation is read (not DCP's safetensors option)") from None
        if tuple(t.shape) != tuple(chunk.sizes) or math.prod(chunk.sizes) != t.numel():
            raise CheckpointError(f"{f}: chunk of {key!r} has shape {tuple(t.shape)}, index says {tuple(chunk.sizes)}",
                                  hint="the index and the data disagree; re-save the checkpoint")
        return t
