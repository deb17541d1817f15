"""What machine a figure was measured on, and which float64 BLAS is faster on it (measured once, then cached).

Why a measurement and not a rule: torch's CPU wheels link Intel MKL, numpy's link OpenBLAS. On Intel CPUs MKL's
float64 GEMM and ``syevd`` are usually the faster; on AMD EPYC (this project's development machine) OpenBLAS was
2.4× faster for the Gram (``XᵀX`` of a 4864×896 matrix: 0.12 s vs 0.28 s, one thread) and 1.7× for ``eigvalsh`` of
an 896×896 Gram (docs/performance.md). Both backends run the same float64 algorithms, so the accuracy contract of
:mod:`opd_dynamics.linalg` holds for either (tested for both); only the speed differs, and only a timing on the
machine itself can say which wins.

:func:`blas_backend` times both on a 2048×512 Gram + ``eigvalsh`` (~0.1 s) the first time it is asked, and caches the
answer in ``~/.cache/opd-dynamics/blas.json`` keyed by CPU model, library versions and thread count.
``OPD_DYNAMICS_BLAS=torch|numpy`` overrides it; ``OPD_DYNAMICS_CACHE`` moves the cache directory.

>>> blas_backend() in ("torch", "numpy")
True
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
import json
import os
import platform
import time
from pathlib import Path

BACKENDS = ("torch", "numpy")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _own_running() -> int:
    """Threads of this process that are runnable right now (state R in /proc/self/task/*/stat)."""
    n = 0
    for t in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{t}/stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        n += stat[stat.rfind(")") + 2:][:1] == "R"
    return n


def others_running(samples: int = 5, gap: float = 0.004) -> float:
    """How many CPUs other processes keep busy *now*: runnable tasks system-wide (``/proc/loadavg``'s 4th field)
    minus this process's own runnable threads, the median of a few samples ~4 ms apart (about 20 ms in all).

    Why not the 1-minute load average: it lags by a minute and counts this process's own recent work — a benchmark
    that had just run two 2-core jobs saw load 2 on an idle 2-core machine, chose one thread, and measured
    ``analyze`` at 2× its floor (docs/performance.md). Falls back to that average where ``/proc`` is absent.
    """
    try:
        vals = []
        for i in range(samples):
            if i:
                time.sleep(gap)
            running = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
            vals.append(max(0, running - _own_running()))
        return float(sorted(vals)[len(vals) // 2])
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0


def blas_libraries() -> str:
    """torch's and numpy's BLAS, in one short string."""
    import numpy as np
    import torch

    cfg = torch.__config__.show()
    torch_blas = "mkl" if "BLAS_INFO=mkl" in cfg else ("openblas" if "openblas" in cfg.lower() else "other")
    try:
        info = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        np_blas = f"{info.get('name', '?')} {info.get('version', '')}".strip()
    except Exception:  # older numpy: no dict mode; the name is informational only
        np_blas = "unknown"
    return f"torch {torch.__version__} ({torch_blas}), numpy {np.__version__} ({np_blas})"


def describe() -> str:
    """One line for the head of every benchmark figure: CPU, cores, threads, BLAS and the load at the start."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu_model()}; {usable_cpus()} usable CPUs; torch threads {torch.get_num_threads()}; "
            f"{blas_libraries()}; BLAS for float64 Gram/eigh: {blas_backend()}; load average {load:.2f}, "
            f"other processes running now {others_running():.0f}")


def _cache_file() -> Path:
    root = os.environ.get("OPD_DYNAMICS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "opd-dynamics")
    return Path(root) / "blas.json"


def _key() -> str:
    import numpy as np
    import torch

    return f"{cpu_model()}|torch {torch.__version__}|numpy {np.__version__}|threads {torch.get_num_threads()}"


def _time_backend(backend: str) -> float:
    import numpy as np
    import torch

    x = torch.randn(2048, 512, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        if backend == "numpy":
            a = x.numpy()
            np.linalg.eigvalsh(a.T @ a)
        else:
            torch.linalg.eigvalsh(x.T @ x)
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate() -> dict[str, float]:
    """Seconds for a 2048×512 float64 Gram + ``eigvalsh`` with each backend (best of 3)."""
    return {b: _time_backend(b) for b in BACKENDS}


@functools.lru_cache(maxsize=None)
def _chosen(key: str) -> str:
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached, dict) and cached.get(key) in BACKENDS:
        return cached[key]
    times = calibrate()
    choice = min(times, key=times.get)
    try:  # the cache is an optimisation: a read-only home directory only costs a re-measurement next time
        path.parent.mkdir(parents=True, exist_ok=True)
        cached = cached if isinstance(cached, dict) else {}
        cached[key] = choice
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass
    return choice


def blas_backend() -> str:
    """``torch`` or ``numpy``: the faster float64 BLAS/LAPACK for CPU Grams on this machine (see module doc)."""
    forced = os.environ.get("OPD_DYNAMICS_BLAS", "").strip().lower()
    if forced and forced != "auto":
        if forced not in BACKENDS:
            from .errors import OPDError
            raise OPDError(f"OPD_DYNAMICS_BLAS={forced!r} not understood", hint="use torch, numpy or auto")
        return forced
    return _chosen(_key())


@functools.lru_cache(maxsize=1)
def _openblas():
    """numpy's bundled OpenBLAS (the CPU float64 Gram/eigh backend on some machines), or None."""
    import ctypes
    import glob

    import numpy as np

    libs = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*"))):
        try:
            return ctypes.CDLL(path)  # already loaded by numpy: this is the same handle
        except OSError:
            continue
    return None


def set_blas_threads(n: int) -> bool:
    """Set the threads of numpy's OpenBLAS pool; False when it cannot be set (another BLAS, or none found)."""
    lib = _openblas()
    for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            fn(int(n))
            return True
    return False


def blas_threads() -> int | None:
    """Threads of numpy's OpenBLAS pool (None when it cannot be asked)."""
    lib = _openblas()
    for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            return int(fn())
    return None


@contextmanager
def single_blas_thread():
    """Run a block of small numpy BLAS/LAPACK calls on one OpenBLAS thread, then restore the pool's size.

    Why: the subspace iteration for the top-k vectors is 8 rounds of (896×896)·(896×42) products and QRs of
    896×42 blocks; on two threads OpenBLAS spends more time handing them out than computing (48 ms against 27 ms
    on one thread, AMD EPYC; docs/performance.md), while the large Gram and ``eigvalsh`` around it do gain from two.
    """
    before = blas_threads()
    if before is None or before <= 1:
        yield
        return
    set_blas_threads(1)
    try:
        yield
    finally:
        set_blas_threads(before)
