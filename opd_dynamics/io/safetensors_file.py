"""A safetensors file read one tensor at a time by byte range (``pread`` locally, ranged GETs remotely; no mmap,
no pickle).

Why not ``safe_open``: it memory-maps the file, so every byte a long analysis touches stays counted in the
process's resident memory until the handle closes, and a truncated file is only noticed when a read faults.
Here the header is parsed and checked against the file size up front, and each ``get_tensor`` reads exactly
that tensor's bytes into fresh memory. The bytes come from a :mod:`~opd_dynamics.io.storage`: the header is one
request (the first ``HEADER_PROBE`` bytes, then the rest only when the header is longer), each tensor one more, so the
same code reads a local file, an S3 object or a Hub revision.

>>> import tempfile, torch, safetensors.torch as st, os
>>> p = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> st.save_file({"w": torch.eye(2, dtype=torch.bfloat16)}, p, metadata={"format": "pt"})
>>> f = SafetensorsFile(p)
>>> f.keys(), f.shape("w"), f.dtype("w"), f.get_tensor("w").dtype
(['w'], (2, 2), torch.bfloat16, torch.bfloat16)
"""
from __future__ import annotations

import json
import math
import os
import struct

import torch

from ..errors import CheckpointError
from .storage import as_path, storage_of

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 2**20  # the format caps headers at 100 MB
#: bytes read speculatively for the header: one request covers the length and the JSON of a 7B shard; whatever
#: data follows in those bytes is kept and serves the tensors that lie inside it
HEADER_PROBE = 64 * 2**10


class SafetensorsFile:
    """Header of one ``.safetensors`` file, validated; tensors read on demand (``keys``, ``get_tensor``, ``metadata``)."""

    def __init__(self, path: str | os.PathLike):
        self.path = as_path(path)
        self._storage = storage_of(self.path)
        self._entries, self._metadata, self._data_start, self._prefix = _parse_header(self.path, self._storage)

    def keys(self) -> list[str]:
        return list(self._entries)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name]["shape"])

    def dtype(self, name: str) -> torch.dtype:
        return DTYPES[self._entries[name]["dtype"]]

    def nbytes(self, name: str) -> int:
        start, end = self._entries[name]["data_offsets"]
        return end - start

    def get_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor into fresh CPU memory, in its stored dtype."""
        entry = self._entries[name]
        start, end = entry["data_offsets"]
        if end <= len(self._prefix):  # already fetched with the header
            buf = bytearray(self._prefix[start:end])
        else:
            try:
                buf = self._storage.read_range(self.path, self._data_start + start, end - start)
            except OSError as e:
                raise CheckpointError(f"{self.path}: cannot read tensor {name!r} ({e.strerror or e})",
                                      hint="check the path and permissions") from None
        if len(buf) != end - start:
            raise CheckpointError(f"{self.path}: truncated while reading tensor {name!r} "
                                  f"({len(buf)} of {end - start} bytes)", hint="re-copy or re-save this checkpoint")
        dtype = DTYPES[entry["dtype"]]
        if not buf:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(entry["shape"])


def _parse_header(path, storage) -> tuple[dict, dict, int, bytearray]:
    fix = "re-copy or re-save this checkpoint"
    try:
        size = storage.stat(path).size
        head = storage.read_range(path, 0, min(size, HEADER_PROBE), header=True)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)", hint=fix)
        (n,) = struct.unpack("<Q", head[:8])
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path}: corrupt safetensors header (claims {n} header bytes, "
                                  f"file has {size})", hint=fix)
        if 8 + n > len(head):
            head += storage.read_range(path, len(head), 8 + n - len(head), header=True)
        header = json.loads(bytes(head[8:8 + n]))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})", hint="check the path and permissions") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not valid JSON)", hint=fix) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (not a JSON object)", hint=fix)
    metadata = header.pop("__metadata__", None) or {}
    data_len = size - 8 - n
    for name, e in header.items():
        try:
            dtype, shape, (start, end) = e["dtype"], e["shape"], e["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}", hint=fix) from None
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}",
                                  hint=f"convert to one of {sorted(DTYPES)}")
        want = math.prod(shape) * DTYPES[dtype].itemsize
        if end - start != want or start < 0:
            raise CheckpointError(f"{path}: corrupt header: tensor {name!r} spans {end - start} bytes, "
                                  f"shape {shape} {dtype} needs {want}", hint=fix)
        if end > data_len:
            raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {end} of the data "
                                  f"section but the file holds only {data_len}", hint=fix)
    return header, metadata, 8 + n, head[8 + n:]
