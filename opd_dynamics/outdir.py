"""A result directory written as one unit: checked before any reading, locked against a second writer, filled in a
sibling temporary directory and swapped into place.

What a reader of ``-o DIR`` can rely on (``docs/guarantees.md``): at every instant ``DIR`` is either absent, the
previous complete result, or the new complete result — never a mix (a rerun without ``--csv`` leaves no old
``metrics.csv``), never half-written; files get the user's umask (not a temp file's 0600); two processes writing one
``DIR`` cannot interleave (the second is refused at once, naming the first); an interruption (an error, Ctrl-C,
SIGTERM, SIGHUP) leaves ``DIR`` as it was and no temporary directory behind.

    with claim("results/opd") as out:   # checks + lock now, before hours of reading
        df = ...                         # compute
        out.commit({"metrics.parquet": lambda p: df.to_parquet(p), "manifest.json": lambda p: p.write_text("{}")})

:func:`write_results` is the one-shot form. ``commit`` may be called again while the claim is held (a watch mode
rewriting after each checkpoint): each call replaces the whole directory. Claims are re-entrant within a process,
so a library call that writes ``DIR`` inside a command that already claimed it commits through the same claim.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp()) / "res"
>>> _ = write_results(d, {"a.txt": lambda p: p.write_text("1")})
>>> _ = write_results(d, {"b.txt": lambda p: p.write_text("2")})
>>> sorted(x.name for x in d.iterdir())
['.opd-dynamics.json', 'b.txt']
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import secrets
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

from .errors import OPDError

#: written into every result directory (the files this tool put there): a rerun may replace a directory holding it
MARKER = ".opd-dynamics.json"
#: what earlier versions (and ``report``) wrote into result directories, before the marker
_LEGACY_PROOF = ("manifest.json", "report.json", "replay.json")

Writer = Callable[[Path], object]


class OutputError(OPDError):
    """The output location cannot take a result (a file, not writable, someone else's files, being written)."""


def _writable(d: Path) -> bool:
    return os.access(d, os.W_OK | os.X_OK)


def _ours(out: Path) -> bool:
    """Whether an existing directory may be replaced: empty, or an earlier result (it holds the marker)."""
    try:
        entries = os.listdir(out)
    except OSError as e:
        raise OutputError(f"{out}: cannot list ({e.strerror})", hint="check the permissions of -o") from None
    return not entries or any(p in entries for p in (MARKER, *_LEGACY_PROOF))


def check_out(out: str | os.PathLike) -> Path:
    """Raise :class:`OutputError` unless a result can be written at ``out``; create nothing. Returns the resolved path.

    ``out`` must be absent (under a writable directory), empty, or an earlier result (replaced whole, files a user
    put inside included: a result directory is one unit).
    """
    out = Path(out).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out}: exists and is not a directory", hint="give -o a directory path")
        if not _ours(out):
            raise OutputError(f"{out}: holds files and is not an opd-dynamics report or result directory",
                              hint="choose a new or empty -o directory (a result directory is replaced whole)")
        for d in (out.parent, out):
            if not _writable(d):
                raise OutputError(f"{d}: not writable, cannot replace {out}", hint="choose a writable -o location")
        return out
    anc = out.parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise OutputError(f"{anc}: is a file, cannot create {out} under it", hint="give -o a directory path")
    if not _writable(anc):
        raise OutputError(f"{anc}: not writable, cannot create {out}", hint="choose a writable -o location")
    return out


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # racy with other threads, hence only the fallback
    os.umask(old)
    return old


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


class Claim:
    """A held output directory (see the module docstring); made by :func:`claim`."""

    def __init__(self, out: Path, lock: Path, fd: int):
        self.out, self.lock, self._fd, self.depth = out, lock, fd, 0

    def commit(self, files: Mapping[str, Writer]) -> Path:
        """Write ``files`` (relative name -> ``writer(path)``) into a fresh directory and swap it in as ``out``."""
        with self.staging() as tmp:
            for name, write in files.items():
                path = tmp / name
                path.parent.mkdir(parents=True, exist_ok=True)
                write(path)
        return self.out

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh sibling directory to fill; swapped in as ``out`` when the block ends normally, removed always."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.parent / f".{self.out.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
        os.mkdir(tmp)  # mode 0777 & ~umask, unlike mkdtemp's 0700
        try:
            yield tmp
            names = sorted(os.listdir(tmp))
            (tmp / MARKER).write_text(json.dumps({"tool": "opd-dynamics", "files": names}, indent=1) + "\n")
            self._swap(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # after a swap it holds the previous result

    def _swap(self, tmp: Path) -> None:
        out = self.out
        if not out.exists():
            os.rename(tmp, out)
            return
        if not _ours(out):  # it may have changed since the claim
            raise OutputError(f"{out}: files appeared that opd-dynamics did not write",
                              hint="move them away and rerun")
        if _exchange(tmp, out):
            return
        old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(3)}"
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(old, out)
            raise
        os.rename(old, tmp)  # removed with the staging directory

    def _remove_stale(self) -> None:
        """Temporary directories of writers that were killed (SIGKILL, power loss): nobody else holds this lock."""
        for p in self.out.parent.glob(f".{self.out.name}.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
        for kind in ("old", "states"):  # ``states``: the analysis cache's staging (:mod:`opd_dynamics.cache`)
            for p in self.out.parent.glob(f".{self.out.name}.{kind}-*"):
                shutil.rmtree(p, ignore_errors=True)


_HELD: dict[Path, Claim] = {}
_HELD_LOCK = threading.Lock()


def _lock_path(out: Path) -> Path:
    """``.NAME.opd-lock`` beside ``out``, or in the nearest existing ancestor when the parent does not exist yet."""
    anc, rest = out.parent, [out.name]
    while not anc.exists():
        rest.insert(0, anc.name)
        anc = anc.parent
    return anc / ("." + "%".join(rest) + ".opd-lock")


def _acquire(out: Path) -> Claim:
    lock = _lock_path(out)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise OutputError(f"{lock.parent}: cannot write here ({e.strerror})",
                              hint="choose a writable -o location") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise OutputError(f"{out}: another opd-dynamics process (pid {pid}) is writing there",
                              hint="wait for it to finish, or choose another -o") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else its holder removed it between our open and flock: take a fresh one
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Claim(out, lock, fd)


def _release(c: Claim) -> None:
    try:
        os.unlink(c.lock)
    except OSError:
        pass
    os.close(c._fd)


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


@contextmanager
def _signals_unwind() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into ``SystemExit`` while a claim is held, so clean-up runs (Ctrl-C already does)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            saved[sig] = signal.signal(sig, _raise_exit)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


@contextmanager
def claim(out: str | os.PathLike) -> Iterator[Claim]:
    """Check ``out`` (:func:`check_out`) and lock it for this process until the block ends; re-entrant."""
    path = check_out(out)
    with _HELD_LOCK:
        held = _HELD.get(path)
    if held is not None:
        held.depth += 1
        try:
            yield held
        finally:
            held.depth -= 1
        return
    c = _acquire(path)
    with _HELD_LOCK:
        _HELD[path] = c
    try:
        with _signals_unwind():
            c._remove_stale()
            yield c
    finally:
        with _HELD_LOCK:
            _HELD.pop(path, None)
        _release(c)


def write_results(out: str | os.PathLike, files: Mapping[str, Writer]) -> Path:
    """Replace ``out`` by a directory holding exactly ``files`` (name -> ``writer(path)``), as one unit."""
    with claim(out) as c:
        return c.commit(files)


def files_mode() -> int:
    """The mode new files get here (``0o666 & ~umask``): what result files are created with."""
    return 0o666 & ~_umask()
