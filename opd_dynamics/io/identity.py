"""A checkpoint's identity: what must not change for a cached result of it to stay valid.

For each file a reader depends on: its name, size and modification time (ns), plus — for ``.safetensors`` —
a SHA-256 of its header (names, dtypes, shapes, byte offsets). A checkpoint rewritten in place changes at least
one of them (a rewrite that kept size, mtime and header would have to be deliberate). The bytes are never
hashed: that would cost a full read, which is what caching saves.

Readers implement ``identity() -> str``; :func:`identity_of` asks a reader for it and falls back to
:func:`files_identity` over the files directly inside the reader's ``path``.

>>> import tempfile, torch, safetensors.torch as st, os
>>> d = tempfile.mkdtemp(); st.save_file({"w": torch.ones(2)}, os.path.join(d, "model.safetensors"))
>>> a = files_identity([os.path.join(d, "model.safetensors")]); len(a), a == files_identity([os.path.join(d, "model.safetensors")])
(64, True)
"""
from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Iterable

_MAX_HEADER = 100 * 2**20


def _header_digest(path: Path) -> str:
    """SHA-256 of a safetensors file's 8-byte length + JSON header ("" when unreadable: the size says enough)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return ""
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                return ""
            return hashlib.sha256(raw + fh.read(n)).hexdigest()
    except OSError:
        return ""


def files_identity(paths: Iterable[str | os.PathLike]) -> str:
    """One hex digest over (name, size, mtime_ns, safetensors header hash) of each file; missing files count too.

    A remote file (:class:`~opd_dynamics.io.storage.RemotePath`) counts its name, size and ETag (the Hub's blob id),
    which its storage changes whenever the bytes change; nothing is read but the listing.
    """
    from .storage import is_remote

    h = hashlib.sha256()
    for p in sorted((x if is_remote(x) else Path(x) for x in paths), key=str):
        if is_remote(p):
            st = p.storage.stat(p)
            h.update(f"{p.name}\0{st.size}\0{st.etag}\n".encode())
            continue
        try:
            st = p.stat()
            facts = f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}"
        except OSError:
            facts = f"{p.name}\0missing"
        if p.suffix == ".safetensors":
            facts += "\0" + _header_digest(p)
        h.update(facts.encode() + b"\n")
    return h.hexdigest()


def identity_of(reader) -> str:
    """``reader.identity()`` when the reader has one, else :func:`files_identity` of the files in ``reader.path``."""
    fn = getattr(reader, "identity", None)
    if callable(fn):
        return fn()
    from .storage import is_remote

    path = reader.path if is_remote(reader.path) else Path(reader.path)
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    return files_identity(files)
