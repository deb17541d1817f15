"""Give back the pages of an mmap-loaded ``torch.load`` once a tensor has been copied out of them.

``torch.load(mmap=True)`` maps a whole rank file privately; every page a read touches then stays counted in the
process's resident memory until the mapping closes, so a long analysis would end up holding every rank file.
After copying one shard out, :func:`release` asks the kernel to drop exactly those pages (``MADV_DONTNEED`` on
a private, never-written file mapping: the next touch reads the file again). It acts only on address ranges that
``/proc/self/maps`` shows as a mapping of that file, so heap memory is never touched; elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import torch

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
try:
    _libc = ctypes.CDLL("libc.so.6", use_errno=True)
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
except (OSError, AttributeError):
    _libc = None


def mappings(path: Path) -> list[tuple[int, int]]:
    """Address ranges at which ``path`` is mapped in this process (Linux; [] elsewhere)."""
    target = str(Path(path).resolve())
    out = []
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip() == target:
                    lo, hi = parts[0].split("-")
                    out.append((int(lo, 16), int(hi, 16)))
    except OSError:
        return []
    return out


def release(t: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    """Drop the resident pages under ``t``'s bytes when they lie inside one of ``ranges``; True if done."""
    n = t.numel() * t.element_size()
    if _libc is None or n == 0 or not ranges:
        return False
    lo, hi = t.data_ptr(), t.data_ptr() + n
    start, end = lo - lo % _PAGE, hi + (-hi) % _PAGE
    for a, b in ranges:
        if a <= start and end <= b:
            return _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED) == 0
    return False


__all__ = ["mappings", "release"]
