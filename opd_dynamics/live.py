"""Live runs: tell a complete checkpoint from one still being written, and follow a training run as it saves.

A checkpoint directory is **complete** when every file its index names is present and every safetensors file is
as long as its header says (:func:`incomplete` says why not). Trainers that write in place (verl, custom loops)
leave half-written shards for a while; HF ``Trainer`` writes ``tmp-checkpoint-N/`` and renames it, and such names
are never taken for checkpoints. Watch mode (:func:`follow`) also waits until every file's size has stayed the same
over one polling interval, since a file can be long enough and still be written.

``analyze`` without watching warns about an incomplete newest checkpoint and leaves it out (the CLI then exits with
status 3, see :data:`EXIT_SKIPPED`); :func:`follow` analyses each checkpoint once it is complete, incrementally
(:mod:`opd_dynamics.cache`), rewriting the table (and the report) atomically after each.
"""
from __future__ import annotations

import json
import struct
import time
import warnings
from pathlib import Path
from typing import Callable

from .io.checkpoint import BIN_INDEX, BIN_SINGLE, ST_INDEX, ST_SINGLE
from .io.discovery import find_steps
from .io.lora import ADAPTER_ST

#: CLI exit status when ``analyze`` left out an incomplete checkpoint (0: everything analysed, 2: an error)
EXIT_SKIPPED = 3


def _short_safetensors(path: Path) -> str | None:
    """Why a safetensors file is shorter than its header says, or None when it is whole."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                return f"{path.name} has {size} bytes (being written?)"
            (n,) = struct.unpack("<Q", raw)
            if 8 + n > size:
                return f"{path.name}: header incomplete ({size} of at least {8 + n} bytes)"
            header = json.loads(fh.read(n))
    except OSError as e:
        return f"{path.name}: cannot read ({e.strerror})"
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # a corrupt (not short) header: the reader reports it as an error
    ends = [e["data_offsets"][1] for k, e in header.items() if k != "__metadata__" and isinstance(e, dict)
            and isinstance(e.get("data_offsets"), list) and len(e["data_offsets"]) == 2]
    need = 8 + n + max(ends, default=0)
    return f"{path.name}: {size} of {need} bytes (being written?)" if size < need else None


def incomplete(d: str | Path) -> str | None:
    """Why the checkpoint directory ``d`` is not complete yet, or None when it is (or in a format not checked here).

    >>> import tempfile, torch, safetensors.torch as st, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "model.safetensors"); st.save_file({"w": torch.ones(64)}, p)
    >>> incomplete(d) is None
    True
    >>> _ = os.truncate(p, os.path.getsize(p) - 10); incomplete(d)
    'model.safetensors: 334 of 344 bytes (being written?)'
    """
    d = Path(d)
    for index in (ST_INDEX, BIN_INDEX):
        if (d / index).exists():
            try:
                files = sorted(set(json.loads((d / index).read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                return f"{index} is not complete JSON yet"
            missing = [f for f in files if not (d / f).exists()]
            if missing:
                return f"{len(missing)} of {len(files)} shards named in {index} missing, e.g. {missing[0]}"
            for f in files:
                why = _short_safetensors(d / f) if f.endswith(".safetensors") else None
                if why:
                    return why
            return None
    for single in (ST_SINGLE, ADAPTER_ST):
        if (d / single).exists():
            return _short_safetensors(d / single)
    if (d / BIN_SINGLE).exists() and (d / BIN_SINGLE).stat().st_size == 0:
        return f"{BIN_SINGLE} is empty"
    return None


def complete_steps(root: str | Path, steps: list[int] | None = None) -> tuple[list[int] | None, dict[int, str]]:
    """(steps to analyse, {step: why it is left out}) for a run directory whose newest checkpoints may be half-written.

    Only checkpoints newer than every complete one are left out: trainers save in step order, so those can still be
    being written, while a damaged checkpoint between complete ones is corruption and opening the run reports it as
    an error. ``steps`` is returned unchanged when nothing is left out (or when nothing would remain).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # discovery warns again when the run is opened
        try:
            found = find_steps(root)
        except Exception:  # noqa: BLE001 — opening the run reports it, with its hint
            return steps, {}
    wanted = [s for s in (steps if steps is not None else sorted(found)) if s in found and s != 0]
    bad = {s: why for s in wanted if (why := incomplete(found[s]))}
    keep = [s for s in wanted if s not in bad]
    bad = {s: why for s, why in bad.items() if keep and s > max(keep)}
    if not bad:
        return steps, {}
    keep = [s for s in wanted if s not in bad]
    for s, why in bad.items():
        warnings.warn(f"{found[s]}: left out, checkpoint incomplete ({why})", stacklevel=3)
    return keep, bad


def _sizes(d: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``d``."""
    out = {}
    for p in sorted(d.rglob("*")):
        try:
            if p.is_file():
                st = p.stat()
                out[str(p)] = (st.st_size, st.st_mtime_ns)
        except OSError:
            out[str(p)] = (-1, -1)
    return out


class Stability:
    """Remembers each checkpoint's file sizes and mtimes between polls: ready when complete and unchanged since the
    last look."""

    def __init__(self):
        self._seen: dict[Path, dict[str, tuple[int, int]]] = {}

    def ready(self, d: Path) -> bool:
        sizes = _sizes(d)
        last, self._seen[d] = self._seen.get(d), sizes
        return last == sizes and incomplete(d) is None

    def files(self, d: Path) -> dict[str, tuple[int, int]]:
        """What the last look saw under ``d`` (a rewritten checkpoint looks different)."""
        return self._seen.get(d, {})


def follow(root: str | Path, analyse: Callable[[list[int]], object], *, interval: float = 2.0,
           until_step: int | None = None, timeout: float | None = None, echo: Callable[[str], None] = print,
           sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """Poll ``root``; call ``analyse(steps)`` with every ready step whenever a new one becomes ready.

    Stops after a step ≥ ``until_step`` has been analysed, after ``timeout`` seconds, or on Ctrl-C (cleanly:
    whatever was written stays a complete table). Returns the steps analysed last.
    """
    stable, done, seen, start = Stability(), [], None, time.monotonic()
    try:
        while True:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    found = find_steps(root)
            except Exception:  # noqa: BLE001 — nothing saved yet
                found = {}
            ready = sorted(s for s, d in found.items() if s != 0 and stable.ready(d))
            now = {s: stable.files(found[s]) for s in ready}  # a checkpoint rewritten in place is analysed again
            if ready and now != seen:
                analyse(ready)
                done, seen = ready, now
                echo(f"analysed steps up to {ready[-1]} ({len(ready)} checkpoints)")
            if until_step is not None and done and done[-1] >= until_step:
                return done
            if timeout is not None and time.monotonic() - start > timeout:
                return done
            sleep(interval)
    except KeyboardInterrupt:
        echo("stopped watching")
        return done
