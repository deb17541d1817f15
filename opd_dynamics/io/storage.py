"""Where checkpoint bytes come from: a local directory or an fsspec URL, read by byte range.

A :class:`Storage` answers ``list``, ``exists``, ``isdir``, ``stat`` (size, ETag), ``read_range(path, start, length)``,
``read_ranges`` (adjacent ranges coalesced into one request) and ``read_text``. Formats read through it, so a
format that works on local disk works on S3, GCS, Azure or the Hugging Face Hub:

- local paths (and ``file://``) stay :class:`pathlib.Path` and are read with ``os.pread`` (no mmap, no copy of
  the file);
- ``s3://``, ``gs://``, ``az://``, ``hf://org/repo@revision`` … become :class:`RemotePath` objects over an
  :class:`FsspecStorage`: the directory listing is fetched once per directory and cached, every read is one ranged
  request (large ranges split into ``chunk_bytes`` parts fetched concurrently, at most ``concurrency`` requests in
  flight per storage), transient failures are retried with exponential backoff, and the last failure is one
  :class:`~opd_dynamics.errors.CheckpointError` naming the URL and the status.

Nothing is ever downloaded whole; formats that need a whole file (pickled ``.bin``/``.pt``) refuse remote paths.

>>> p = as_path("file:///tmp")
>>> type(p).__name__, is_remote(p)
('PosixPath', False)
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import CheckpointError, OPDError
from .byte_cache import ByteCache, default_cache_dir
from .remote_path import RemotePath

#: URL scheme -> (module fsspec needs, the extra that installs it)
BACKENDS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"), "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"),
    "hf": ("huggingface_hub", "hub"),
}


@dataclass(frozen=True)
class Stat:
    """What a listing says about one object: its size and a version tag (ETag, blob id or mtime)."""

    size: int
    etag: str | None = None


@dataclass
class StorageConfig:
    """How remote checkpoints are reached and read.

    Args:
        options: keyword arguments for the fsspec filesystem (``endpoint_url``, ``client_kwargs``, ``anon``, …).
        retries: attempts after the first on a transient failure (backoff ``backoff·2^k`` seconds).
        concurrency: requests in flight at once per storage (the engine's prefetch thread included).
        chunk_bytes: a range larger than this is split into parts fetched concurrently.
        cache_dir: where headers (and, with ``cache_tensors``, tensor bytes) are kept, keyed by URL + ETag;
            ``None`` = ``$OPD_DYNAMICS_CACHE_DIR`` or ``~/.cache/opd-dynamics``; ``False`` = no cache.
        cache_tensors: also cache tensor bytes (a re-run then reads nothing but listings).
    """

    options: dict[str, Any] = field(default_factory=dict)
    retries: int = 3
    backoff: float = 0.25
    concurrency: int = 8
    chunk_bytes: int = 16 * 2**20
    cache_dir: str | os.PathLike | bool | None = None
    cache_tensors: bool = False


class LocalStorage:
    """The local filesystem: ``os.pread`` into fresh memory, sizes from ``stat``."""

    remote = False

    def list(self, path: Path) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: Path) -> bool:
        return Path(path).exists()

    def isdir(self, path: Path) -> bool:
        return Path(path).is_dir()

    def stat(self, path: Path) -> Stat:
        st = os.stat(path)
        return Stat(st.st_size, str(st.st_mtime_ns))

    def read_text(self, path: Path) -> str:
        return Path(path).read_text()

    def read_range(self, path: Path, start: int, length: int, *, header: bool = False) -> bytearray:
        """``length`` bytes from ``start`` (fewer only at the end of the file)."""
        buf = bytearray(length)
        fd = os.open(path, os.O_RDONLY)
        try:
            got, view = 0, memoryview(buf)
            while got < length:
                n = os.preadv(fd, [view[got:]], start + got)
                if n == 0:
                    break
                got += n
        finally:
            os.close(fd)
        del buf[got:]
        return buf

    def read_ranges(self, path: Path, ranges: Sequence[tuple[int, int]]) -> list[bytearray]:
        return [self.read_range(path, s, n) for s, n in ranges]


LOCAL = LocalStorage()


class FsspecStorage:
    """An fsspec filesystem read by byte range, with a listing cache, retries and bounded concurrency."""

    remote = True

    def __init__(self, fs, protocol: str, config: StorageConfig | None = None):
        self.fs, self.protocol = fs, protocol
        self.config = config or StorageConfig()
        self._listings: dict[str, dict[str, dict]] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, self.config.concurrency))
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.config.concurrency), thread_name_prefix="opd-range")
        cache_dir = self.config.cache_dir
        self.cache = None if cache_dir is False else ByteCache(cache_dir or default_cache_dir())
        self.requests = 0        # ranged GETs sent (tests and the benchmark count them)
        self.bytes_read = 0      # bytes those requests returned

    def url(self, path: str) -> str:
        return f"{self.protocol}://{path}"

    # -- listings ---------------------------------------------------------------------------------
    def _ls(self, path: str) -> dict[str, dict] | None:
        """Children of ``path`` by name (cached), or None when ``path`` is not a directory."""
        path = path.rstrip("/")
        with self._lock:
            if path in self._listings:
                return self._listings[path]
        try:
            entries = self._call(lambda: self.fs.ls(path, detail=True), path, what="list")
        except CheckpointError as e:
            if isinstance(e.__cause__, FileNotFoundError) or "not found" in e.message:
                entries = None
            else:
                raise
        out = None
        if entries:
            kids = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries if e["name"].rstrip("/") != path}
            out = kids or None  # listing a file answers the file itself: not a directory
        with self._lock:
            self._listings[path] = out
        return out

    def _entry(self, path: str) -> dict | None:
        parent, _, name = path.rstrip("/").rpartition("/")
        kids = self._ls(parent) if parent and self._listable(parent) else None
        return None if kids is None else kids.get(name)

    def _listable(self, parent: str) -> bool:
        if self.protocol == "hf":  # above the repo root (``org``, ``datasets/org``) there is nothing to list
            return parent.count("/") >= 1 + parent.startswith(("datasets/", "spaces/"))
        return "/" in parent  # a bucket's parent (the account) is not listed

    def list(self, path: str) -> list[str]:
        path = _key(path)
        kids = self._ls(path)
        if kids is None:
            raise CheckpointError(f"{self.url(path)}: no such directory", hint="check the URL")
        return sorted(kids)

    def isdir(self, path: str) -> bool:
        path = _key(path)
        parent = path.rstrip("/").rpartition("/")[0]
        if parent in self._listings:  # the parent was listed: answer from it, no request
            e = self._entry(path)
            return e is not None and e.get("type") == "directory"
        return self._ls(path) is not None

    def exists(self, path: str) -> bool:
        path = _key(path)
        e = self._entry(path)
        return e is not None or self.isdir(path)

    def stat(self, path: str) -> Stat:
        path = _key(path)
        e = self._entry(path)
        if e is None:
            e = self._call(lambda: self.fs.info(path), path, what="stat")
        lfs = e.get("lfs") or {}
        tag = (e.get("ETag") or e.get("etag") or (lfs.get("sha256") if isinstance(lfs, dict) else None)
               or e.get("blob_id") or e.get("LastModified") or e.get("mtime"))
        return Stat(int(e.get("size") or 0), None if tag is None else str(tag).strip('"'))

    def read_text(self, path: str) -> str:
        path = _key(path)
        size = self.stat(path).size
        return bytes(self.read_range(path, 0, size, header=True)).decode()  # metadata: cached like headers

    # -- byte ranges ------------------------------------------------------------------------------
    def read_range(self, path: str, start: int, length: int, *, header: bool = False) -> bytearray:
        """``length`` bytes from ``start`` in one request (several concurrent ones above ``chunk_bytes``).

        ``header=True`` marks small metadata reads, which are cached whenever a cache directory is set;
        tensor bytes are cached only with ``cache_tensors``.
        """
        path = _key(path)
        key = None
        if self.cache is not None and (header or self.config.cache_tensors):
            tag = self.stat(path).etag
            if tag is not None:
                key = self.cache.key(self.url(path), tag, start, length)
                hit = self.cache.get(key)
                if hit is not None:
                    return hit
        buf = bytearray(length)
        step = max(1, self.config.chunk_bytes)
        parts = [(s, min(step, start + length - s)) for s in range(start, start + length, step)]

        def fetch(part):
            s, n = part
            data = self._call(lambda: self._cat(path, s, s + n), path, what="read")
            buf[s - start:s - start + len(data)] = data
            return len(data)

        got = sum(self._pool.map(fetch, parts)) if len(parts) > 1 else (fetch(parts[0]) if parts else 0)
        del buf[got:]
        if key is not None and got == length:
            self.cache.put(key, buf)
        return buf

    def _cat(self, path: str, start: int, end: int) -> bytes:
        """Exactly ``[start, end)``: async backends (s3fs, gcsfs, adlfs) send one ranged GET; for the others (the
        Hub's) the file is opened without fsspec's read-ahead cache, which would fetch past ``end``."""
        if getattr(self.fs, "async_impl", False):
            return self.fs.cat_file(path, start=start, end=end)
        with self.fs.open(path, "rb", cache_type="none") as fh:
            fh.seek(start)
            return fh.read(end - start)

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]], gap: int = 0) -> list[bytearray]:
        """Several ranges of one object; ranges that touch (or lie within ``gap`` bytes) share one request."""
        path = _key(path)
        order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
        out: list[bytearray | None] = [None] * len(ranges)
        i = 0
        while i < len(order):
            j, lo = i, ranges[order[i]][0]
            hi = lo + ranges[order[i]][1]
            while j + 1 < len(order) and ranges[order[j + 1]][0] <= hi + gap:
                j += 1
                hi = max(hi, ranges[order[j]][0] + ranges[order[j]][1])
            block = self.read_range(path, lo, hi - lo)
            for k in order[i:j + 1]:
                s, n = ranges[k]
                out[k] = block[s - lo:s - lo + n]
            i = j + 1
        return out  # type: ignore[return-value]

    # -- retries ----------------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any], path: str, *, what: str):
        url = self.url(path)
        last: BaseException | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(self.config.backoff * 2 ** (attempt - 1))
            try:
                with self._slots:
                    out = fn()
                if what == "read":
                    with self._lock:
                        self.requests += 1
                        self.bytes_read += len(out)
                return out
            except FileNotFoundError as e:
                raise CheckpointError(f"{url}: not found (404)", hint="check the URL and the revision") from e
            except PermissionError as e:
                raise CheckpointError(f"{url}: access denied (403{_detail(e)})",
                                      hint="check the credentials (environment, profile) or pass "
                                           "--storage-option key=value") from e
            except Exception as e:  # noqa: BLE001 — classified below; programming errors re-raise
                status = _status(e)
                if isinstance(e, (TypeError, AttributeError, KeyError, ImportError)) or (
                        status is not None and 400 <= status < 500 and status not in (408, 429)):
                    if status in (401, 403):
                        raise CheckpointError(f"{url}: access denied ({status})",
                                              hint="check the credentials or pass --storage-option") from e
                    if status == 404:
                        raise CheckpointError(f"{url}: not found (404)", hint="check the URL and the revision") from e
                    if status is None:
                        raise
                    raise CheckpointError(f"{url}: {what} failed ({status}{_detail(e)})",
                                          hint="check the URL and --storage-option") from e
                last = e
        raise CheckpointError(f"{url}: {what} failed after {self.config.retries + 1} attempts "
                              f"({_describe(last)})", hint="check the network and the endpoint, then re-run") from last


def _key(path) -> str:
    return path.key if isinstance(path, RemotePath) else str(path)


def _status(e: BaseException) -> int | None:
    for obj in (e, getattr(e, "response", None), e.__cause__):
        code = getattr(obj, "status_code", None) or getattr(obj, "status", None)
        if isinstance(code, int):
            return code
        if isinstance(obj, dict):
            code = obj.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(code, int):
                return code
    return None


def _detail(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
    return f", {text}" if text else ""


def _describe(e: BaseException | None) -> str:
    if e is None:
        return "unknown error"
    status = _status(e)
    text = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
    return f"{type(e).__name__}" + (f" {status}" if status else "") + (f": {text}" if text else "")


# -- URLs -> paths ------------------------------------------------------------------------------------
_STORAGES: dict[tuple, FsspecStorage] = {}
_STORAGES_LOCK = threading.Lock()


def is_url(text: str | os.PathLike) -> bool:
    return isinstance(text, str) and "://" in text.split("/", 1)[0] + "/" and not text.startswith("file://")


def is_remote(path: object) -> bool:
    """Whether ``path`` lives in remote storage (a :class:`RemotePath`)."""
    return isinstance(path, RemotePath)


def storage_of(path: Path | RemotePath) -> LocalStorage | FsspecStorage:
    """The storage that serves ``path``'s bytes."""
    return path.storage if isinstance(path, RemotePath) else LOCAL


def as_path(path: str | os.PathLike | RemotePath, config: StorageConfig | None = None) -> Path | RemotePath:
    """A local :class:`~pathlib.Path` or a :class:`RemotePath` for a URL (``s3://``, ``hf://org/repo@rev`` …).

    >>> str(as_path("file:///data/run")), str(as_path("runs/opd"))
    ('/data/run', 'runs/opd')
    """
    if isinstance(path, RemotePath):
        return path
    if isinstance(path, os.PathLike):
        return Path(path)
    text = str(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if "://" not in text:
        return Path(text)
    protocol = text.split("://", 1)[0].lower()
    storage = open_storage(protocol, config)
    key = text.split("://", 1)[1].rstrip("/")
    if protocol != "hf":
        key = storage.fs._strip_protocol(text).rstrip("/")
    return RemotePath(storage, key)


def open_storage(protocol: str, config: StorageConfig | None = None) -> FsspecStorage:
    """One :class:`FsspecStorage` per (protocol, settings), the backend imported only now."""
    config = config or StorageConfig()
    ident = (protocol, repr(sorted(config.options.items())), config.retries, config.concurrency,
             str(config.cache_dir), config.cache_tensors, config.chunk_bytes, config.backoff)
    with _STORAGES_LOCK:
        if ident in _STORAGES:
            return _STORAGES[ident]
        import fsspec

        module, extra = BACKENDS.get(protocol, (None, None))
        try:
            if module is not None:
                __import__(module)
            fs = fsspec.filesystem(protocol, **config.options)
        except ImportError:
            raise OPDError(f"{protocol}:// URLs need the {module or protocol} package",
                           hint=f"pip install 'opd-dynamics[{extra}]'" if extra else f"install the fsspec backend "
                                f"for {protocol}://") from None
        except ValueError as e:
            raise OPDError(f"{protocol}:// is not a storage fsspec knows ({e})", hint="use s3://, gs://, az://, "
                           "hf://org/repo@revision or a local path") from None
        except TypeError as e:
            raise OPDError(f"--storage-option not accepted by the {protocol}:// backend ({e})",
                           hint="see the backend's documentation for its options") from None
        _STORAGES[ident] = st = FsspecStorage(fs, protocol, config)
        return st


def parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["endpoint_url=http://x", 'client_kwargs={"region_name": "eu"}']`` -> a dict (values JSON when they parse).

    >>> parse_options(["endpoint_url=http://127.0.0.1:9000", "anon=true", 'client_kwargs={"a": 1}'])
    {'endpoint_url': 'http://127.0.0.1:9000', 'anon': True, 'client_kwargs': {'a': 1}}
    """
    import json

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OPDError(f"--storage-option {pair!r}: expected key=value", hint="e.g. --storage-option "
                           "endpoint_url=http://127.0.0.1:9000")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


__all__ = ["BACKENDS", "FsspecStorage", "LOCAL", "LocalStorage", "RemotePath", "Stat", "StorageConfig", "as_path",
           "is_remote", "is_url", "open_storage", "parse_options", "storage_of"]
