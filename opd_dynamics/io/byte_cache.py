"""A local cache of remote byte ranges, keyed by URL + ETag (or revision) + range: a re-run re-fetches nothing
that did not change, and a changed object (new ETag) is never served stale.

Files are written to a temporary name and renamed, so a crashed run leaves no half entry.

>>> import tempfile
>>> c = ByteCache(tempfile.mkdtemp()); k = c.key("s3://b/m.safetensors", "etag1", 0, 4)
>>> c.get(k) is None, c.put(k, b"abcd"), bytes(c.get(k))
(True, None, b'abcd')
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def default_cache_dir() -> Path:
    """``$OPD_DYNAMICS_CACHE_DIR``, else ``$XDG_CACHE_HOME/opd-dynamics``, else ``~/.cache/opd-dynamics``."""
    env = os.environ.get("OPD_DYNAMICS_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opd-dynamics"


class ByteCache:
    """Byte ranges on local disk under ``root/ranges/``; ``hits`` and ``misses`` count lookups."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root) / "ranges"
        self.hits = self.misses = 0

    @staticmethod
    def key(url: str, etag: str, start: int, length: int) -> str:
        return hashlib.sha256(f"{url}\0{etag}\0{start}\0{length}".encode()).hexdigest()

    def _file(self, key: str) -> Path:
        return self.root / key[:2] / key

    def get(self, key: str) -> bytearray | None:
        try:
            data = bytearray(self._file(key).read_bytes())
        except OSError:
            self.misses += 1
            return None
        self.hits += 1
        return data

    def put(self, key: str, data: bytes | bytearray) -> None:
        f = self._file(key)
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=f.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, f)
        except OSError:  # a read-only or full cache directory must not fail the analysis
            pass
