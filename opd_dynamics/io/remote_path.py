"""A path in remote storage that speaks the few :class:`pathlib.Path` verbs run discovery and formats use.

``/``, ``name``, ``parent``, ``exists``, ``is_dir``, ``is_file``, ``iterdir``, ``glob`` (one level), ``read_text``,
``read_bytes`` (small files),
``stat().st_size`` and ``resolve``: code written against a local ``Path`` walks a bucket unchanged, every
question answered from one cached listing per directory. It has no ``__fspath__`` on purpose: ``open()`` or
``torch.load`` on it fail instead of silently downloading a whole file.
"""
from __future__ import annotations

import fnmatch
from types import SimpleNamespace
from typing import Iterator


class RemotePath:
    """``storage`` + a key inside it (``bucket/run/checkpoint-4``, ``org/repo@step-100/model.safetensors``)."""

    __slots__ = ("storage", "key")

    def __init__(self, storage, key: str):
        self.storage, self.key = storage, key.rstrip("/")

    def __truediv__(self, other: str) -> "RemotePath":
        out = self
        for part in str(other).split("/"):
            if part == "..":
                out = out.parent
            elif part not in ("", "."):
                out = RemotePath(self.storage, f"{out.key}/{part}")
        return out

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.name
        return name[name.rfind("."):] if "." in name.lstrip(".") else ""

    @property
    def stem(self) -> str:
        return self.name[: len(self.name) - len(self.suffix)]

    @property
    def parent(self) -> "RemotePath":
        return RemotePath(self.storage, self.key.rpartition("/")[0] or self.key)

    def exists(self) -> bool:
        return self.storage.exists(self.key)

    def is_dir(self) -> bool:
        return self.storage.isdir(self.key)

    def is_file(self) -> bool:
        return self.exists() and not self.is_dir()

    def iterdir(self) -> Iterator["RemotePath"]:
        return iter([self / n for n in self.storage.list(self.key)])

    def glob(self, pattern: str) -> Iterator["RemotePath"]:
        if "/" in pattern:
            raise NotImplementedError("RemotePath.glob matches one directory level")
        if not self.is_dir():
            return iter([])
        return iter([self / n for n in self.storage.list(self.key) if fnmatch.fnmatchcase(n, pattern)])

    def read_text(self, encoding: str | None = None) -> str:
        return self.storage.read_text(self.key)

    def read_bytes(self) -> bytes:
        """The whole (small: JSON, config) file; metadata reads are cached like headers."""
        return bytes(self.storage.read_range(self.key, 0, self.storage.stat(self.key).size, header=True))

    def stat(self):
        st = self.storage.stat(self.key)
        return SimpleNamespace(st_size=st.size, etag=st.etag)

    def resolve(self) -> "RemotePath":
        return self

    def relative_to(self, other: "RemotePath") -> str:
        if not (self.key == other.key or self.key.startswith(other.key + "/")):
            raise ValueError(f"{self} is not under {other}")
        return self.key[len(other.key):].lstrip("/")

    def as_posix(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return self.storage.url(self.key)

    def __repr__(self) -> str:
        return f"RemotePath({str(self)!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and (self.storage, self.key) == (other.storage, other.key)

    def __hash__(self) -> int:
        return hash((id(self.storage), self.key))

    def __lt__(self, other: "RemotePath") -> bool:
        return self.key < other.key
