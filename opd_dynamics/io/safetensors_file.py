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
_MAX_HEADER = 100_000_000  # the safetensors library refuses longer headers
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
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})", hint="check the path and permissions") from None
    try:
        header = json.loads(bytes(head[8:8 + n]).decode("utf-8"), parse_constant=_no_constant)
        json.dumps(header, ensure_ascii=False).encode("utf-8")  # a lone surrogate escape ("\\ud800") is not text
    except (UnicodeError, ValueError, RecursionError):
        raise CheckpointError(f"{path}: corrupt safetensors header (not valid UTF-8 JSON)", hint=fix) from None
    entries, metadata = check_header(header, size - 8 - n, path)
    return entries, metadata, 8 + n, head[8 + n:]


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")  # json.loads takes NaN/Infinity; the format's parser does not


def _uint(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**64


def _nbytes(shape: list[int], dtype: str) -> int | None:
    """prod(shape) · itemsize, or None where the library's 64-bit checked product overflows (even if a 0 follows)."""
    n = 1
    for d in shape:
        n *= d
        if n >= 2**64:
            return None
    n *= DTYPES[dtype].itemsize * 8  # the library counts bits
    return None if n >= 2**64 else n // 8


def check_header(header, data_len: int, path=None) -> tuple[dict, dict]:
    """Validate a parsed header against a data section of ``data_len`` bytes, as strictly as the safetensors library.

    Rules (those of ``safetensors``' own ``Metadata::validate``): a JSON object; ``__metadata__`` absent, null or
    an object of strings; every other entry an object with ``dtype`` (a known name), ``shape`` (non-negative
    integers) and ``data_offsets`` (two non-negative integers); sorted by offset the tensors tile the data section
    exactly — starting at 0, no gap, no overlap, ending at its last byte — and each spans ``prod(shape) · itemsize``
    bytes. Returns ``(entries, metadata)``; anything else is a :class:`CheckpointError` naming the file.
    """
    fix = "re-copy or re-save this checkpoint"
    path = "<header>" if path is None else path

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: corrupt safetensors header ({what})", hint=fix)

    if not isinstance(header, dict):
        raise bad("not a JSON object")
    header = dict(header)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise bad("__metadata__ is not an object of strings")
    spans = []
    for name, e in header.items():
        if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= e.keys():
            raise bad(f"tensor {name!r} lacks dtype, shape or data_offsets")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if not isinstance(dtype, str):
            raise bad(f"tensor {name!r} has dtype {dtype!r}, not a string")
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}",
                                  hint=f"convert to one of {sorted(DTYPES)}")
        if not isinstance(shape, list) or not all(_uint(d) for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of non-negative integers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_uint(o) for o in offsets):
            raise bad(f"tensor {name!r} has data_offsets {offsets!r}, not two non-negative integers")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for start, stop, name in sorted(spans):
        if start != end or stop < start:
            what = "overlaps the tensor before it" if start < end else "leaves a gap before it" if start > end \
                else "ends before it starts"
            raise bad(f"tensor {name!r} at bytes {start}..{stop} {what}")
        e = header[name]
        want = _nbytes(e["shape"], e["dtype"])
        if want is None:
            raise bad(f"tensor {name!r} has shape {e['shape']}, too large")
        if stop - start != want:
            raise bad(f"tensor {name!r} spans {stop - start} bytes, shape {e['shape']} {e['dtype']} needs {want}")
        end = stop
    if end > data_len:
        name = max(spans)[2]
        raise CheckpointError(f"{path}: truncated: tensor {name!r} ends at byte {end} of the data "
                              f"section but the file holds only {data_len}", hint=fix)
    if end < data_len:
        raise bad(f"{data_len - end} bytes after the last tensor, not covered by the header")
    return header, metadata
