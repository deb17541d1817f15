"""Incremental results: keep every computed (tensor, step, reference, metric) cell beside the table, reuse it.

``analyze(..., out=DIR)`` keeps, in ``DIR/cache/``,

- ``cells.parquet``: the rows of each cell (run, module, step, ref_step, metric spec), with the cell's key;
- ``states/<digest>.safetensors``: per (run, tensor), the per-step states of trajectory metrics
  (``alignment_to_final``, ``subspace_locking``, ``rank1_pca_evr``: top-k singular vectors, k × dim floats), so a
  new final step re-finalises them without reading the earlier checkpoints again.

A cell's key is a SHA-256 over the settings that change numbers (package version, spectrum method, non-finite
policy, device type, LoRA scaling) and the identities (:mod:`opd_dynamics.io.identity`: size, mtime and header
hash of every file) of the step's checkpoint, of its reference and of the base. A re-run computes only the cells
whose key is absent — new checkpoints, new metrics, rewritten checkpoints — and reads only the checkpoints those
cells need (plus their references: W₀ for ``against=base``). The table is the one a fresh run writes, row for
row (tests check ``assert_frame_equal``). Cells the re-run no longer uses are dropped unless their key is still
valid (a metric left out this time stays cached).

Memory: the states of one tensor are held while it is processed, as in a fresh run. Disk: for the default
``alignment_to_final`` (k = 20, left vectors), 20 × rows(ΔW) float64 values per matrix and step — about 45 MB
per step for Qwen2-0.5B's attention + MLP matrices, plus 24 MB for the embedding if it is selected.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.numpy import load_file, save_file

from .io.identity import identity_of
from .table import COLUMNS, _atomic_write

CACHE_DIR = "cache"
CELLS = "cells.parquet"
SPEC, KEY = "spec", "key"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _pack(state) -> tuple[str, np.ndarray | None] | None:
    """(type tag, array) for a trajectory state we can store safely (no pickle); None when we cannot."""
    if state is None:
        return "none", None
    if isinstance(state, np.ndarray) and state.dtype != object:
        return "ndarray", np.ascontiguousarray(state)
    if isinstance(state, torch.Tensor):
        return "tensor", np.ascontiguousarray(state.detach().cpu().numpy())
    if isinstance(state, (float, int)) and not isinstance(state, bool):
        return "float", np.asarray(float(state))
    return None


def _unpack(tag: str, arr: np.ndarray | None):
    if tag == "none":
        return None
    if tag == "tensor":
        return torch.from_numpy(arr)
    if tag == "float":
        return float(arr)
    return arr


class Memo:
    """The engine's incremental hook: which cells are still to compute, the kept rows and states, what is new.

    Args:
        out: the results directory (``DIR``); the cache lives in ``DIR/cache/``.
        runs, specs: what this analysis covers (the engine's order).
        settings: everything besides the checkpoints that changes numbers; part of every key.
        reuse: False computes every cell afresh (``--no-cache``) and rewrites the cache from it.
    """

    def __init__(self, out: str | os.PathLike, runs, specs, settings: dict[str, Any], *, reuse: bool = True):
        self.dir = Path(out) / CACHE_DIR
        from .metrics.registry import settings_suffixes

        # a cell's rows carry the metric's name as labelled in this analysis (``name[setting]`` when asked twice)
        self.specs = [json.dumps({**s.to_json(), "label": suffix}, sort_keys=True)
                      for s, suffix in zip(specs, settings_suffixes(specs))]
        self.trajectory = [s.info.trajectory for s in specs]
        self.settings = json.dumps(settings, sort_keys=True, default=str)
        self.reuse = reuse
        self._ids: dict[tuple[str, int], str] = {}
        for r in runs:
            self._ids[(r.name, 0)] = identity_of(r.base)
            for s, ck in r.steps.items():
                self._ids[(r.name, s)] = identity_of(ck)
        self._cells: dict[tuple, tuple[str, list[tuple]]] = {}  # (run, module, step, ref, spec) -> (key, rows)
        self._old = pd.DataFrame()
        if reuse and (self.dir / CELLS).exists():
            try:
                self._old = pd.read_parquet(self.dir / CELLS)[[*COLUMNS, SPEC, KEY]]
            except Exception:  # a damaged cache is not an error: everything is recomputed
                self._old = pd.DataFrame()
            n, metric = len(COLUMNS), COLUMNS.index("metric")
            for r in self._old.itertuples(index=False, name=None):  # COLUMNS..., spec, key
                k = (r[0], r[3], int(r[1]), int(r[2]), r[n])
                cell = self._cells.get(k)
                if cell is None:
                    cell = self._cells[k] = (r[n + 1], [])
                if isinstance(r[metric], str):  # not the marker of a cell without rows
                    cell[1].append(tuple(None if x is pd.NA else x for x in r[:n]))
        self._states: dict[tuple, tuple[str, Any]] = {}   # (module, spec, step, ref) -> (key, state), one tensor
        self._new: list[tuple] = []                       # rows of the cells this analysis used, with spec and key
        self.computed = 0                                 # cells computed (tests and the CLI's summary)
        self.reused = 0
        self._fresh: set[tuple] = set()
        self._stage: Path | None = None                   # states written here first, moved in by save()
        self._staged: dict[str, Path | None] = {}

    # -- keys -------------------------------------------------------------------------------------
    def key(self, run: str, step: int, ref_step: int) -> str | None:
        """The cell key of (run, step, ref_step); None for a step this analysis does not cover."""
        ids = self._ids
        if (run, step) not in ids or (run, ref_step) not in ids:
            return None
        return _digest(self.settings, ids[(run, step)], ids[(run, ref_step)], ids[(run, 0)])

    def _state_file(self, p) -> Path:
        return self.dir / "states" / f"{_digest(p.run.name, p.tensor)}.safetensors"

    # -- what the engine asks -----------------------------------------------------------------------
    def todo(self, p, refs: dict[int, int]) -> dict[int, set[int]]:
        """{step: spec indices with a missing cell in any part of this tensor} (steps with nothing missing left out)."""
        kept = self._entries(p) if self.reuse else {}
        out: dict[int, set[int]] = {}
        for s, ref in refs.items():
            key = self.key(p.run.name, s, ref)
            for i, spec in enumerate(self.specs):
                for part in p.parts:
                    cell = self._cells.get((p.run.name, part.name, s, ref, spec))
                    have = cell is not None and cell[0] == key
                    if self.trajectory[i] and not have:
                        st = kept.get((part.name, spec, s, ref))
                        have = st is not None and st[0] == key
                    if not have:
                        out.setdefault(s, set()).add(i)
                        break
        return out

    def states(self, p, refs: dict[int, int], todo: dict[int, set[int]]) -> dict[tuple[str, int], dict[int, Any]]:
        """Kept trajectory states of the cells not in ``todo``, as the engine holds them: {(part, spec index): {step: state}}."""
        self._states = self._load_states(p) if self.reuse else {}
        out: dict[tuple[str, int], dict[int, Any]] = {}
        for s, ref in refs.items():
            key = self.key(p.run.name, s, ref)
            for i, spec in enumerate(self.specs):
                if not self.trajectory[i] or i in todo.get(s, ()):
                    continue
                for part in p.parts:
                    st = self._states.get((part.name, spec, s, ref))
                    if st is not None and st[0] == key:
                        out.setdefault((part.name, i), {})[s] = st[1]
                        self.reused += 1
        return out

    def put(self, p, part, step: int, ref_step: int, i: int, *, rows: list[tuple] | None = None,
            state: Any = None) -> None:
        """Keep one computed cell: its rows, or (trajectory metrics) its per-step state."""
        key = self.key(p.run.name, step, ref_step)
        self.computed += 1
        if rows is not None:
            cell = (p.run.name, part.name, step, ref_step, self.specs[i])
            self._cells[cell] = (key, rows)
            self._fresh.add(cell)
        else:
            self._states[(part.name, self.specs[i], step, ref_step)] = (key, state)

    def rows(self, p, refs: dict[int, int]) -> list[tuple]:
        """Every per-step row of this tensor, in the order a fresh run emits them (step, part, metric)."""
        out = []
        for s, ref in refs.items():
            key = self.key(p.run.name, s, ref)
            for part in p.parts:
                for i, spec in enumerate(self.specs):
                    ident = (p.run.name, part.name, s, ref, spec)
                    cell = self._cells.get(ident)
                    if cell is None or cell[0] != key:
                        continue  # a trajectory metric (its rows come from finalize)
                    self.reused += ident not in self._fresh
                    out.extend(cell[1])
                    self._new.extend(_with(cell[1], p.run.name, part, s, ref, spec, key))
        return out

    def done(self, p) -> None:
        """Write this tensor's trajectory states (atomically) and forget them."""
        entries, arrays = [], {}
        for (module, spec, s, ref), (key, state) in sorted(self._states.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
            if key != self.key(p.run.name, s, ref):
                continue
            packed = _pack(state)
            if packed is None:
                continue  # a third-party state we cannot store without pickle: recomputed next time
            tag, arr = packed
            name = None
            if arr is not None:
                name = f"a{len(arrays)}"
                arrays[name] = arr
            entries.append([module, spec, s, ref, key, tag, name])
        self._states = {}
        name = self._state_file(p).name
        if not entries:
            self._staged[name] = None
            return
        meta = {"run": p.run.name, "tensor": p.tensor, "entries": json.dumps(entries)}
        save_file(arrays, str(self._staging() / name), metadata=meta)
        self._staged[name] = self._staging() / name

    def _staging(self) -> Path:
        """Where states wait until the table is written (beside ``DIR``, so nothing lands in it on an error)."""
        if self._stage is None:
            parent = self.dir.parent.resolve().parent
            parent.mkdir(parents=True, exist_ok=True)
            self._stage = Path(tempfile.mkdtemp(prefix=f".{self.dir.parent.name}.states-", dir=parent))
        return self._stage

    def discard(self) -> None:
        """Forget what this analysis computed (it failed): nothing is written."""
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
        self._staged = {}

    def save(self, into: str | os.PathLike | None = None) -> None:
        """Write ``cells.parquet``: the cells this analysis used, plus earlier ones whose key is still valid.

        ``into``: a fresh cache directory (the new result directory's ``cache/``, :mod:`opd_dynamics.outdir`); the
        earlier cache's files are hard-linked there (copied across filesystems) before this analysis's are added.
        """
        target = self.dir if into is None else Path(into)
        if into is not None and self.dir.is_dir():
            shutil.copytree(self.dir, target, copy_function=_link_or_copy, dirs_exist_ok=True)
        cols = [*COLUMNS, SPEC, KEY]
        new = pd.DataFrame(self._new, columns=cols)
        keys = set(new[KEY])
        old = self._old[self._old[KEY].isin(keys)] if len(self._old) else self._old
        if len(old):
            used = set(zip(new["run"], new["module"], new["step"], new["ref_step"], new[SPEC]))
            mark = [k not in used for k in zip(old["run"], old["module"], old["step"], old["ref_step"], old[SPEC])]
            old = old[mark]
        table = pd.concat([new, old[cols]], ignore_index=True) if len(old) else new
        table = table.astype({"run": "string", "module": "string", "kind": "string", "metric": "string",
                              SPEC: "string", KEY: "string", "layer": "Int64", "expert": "Int64",
                              "value": "float64"})
        states = target / "states"
        states.mkdir(parents=True, exist_ok=True)
        for name, staged in self._staged.items():
            if staged is None:
                (states / name).unlink(missing_ok=True)
            else:
                os.replace(staged, states / name)
        self.discard()
        _atomic_write(target / CELLS, lambda tmp: table.to_parquet(tmp, index=False))

    # -- states on disk -----------------------------------------------------------------------------
    def _entries(self, p) -> dict[tuple, tuple[str, str, str | None]]:
        """{(module, spec, step, ref): (key, type tag, array name)} from a states file's header (no arrays read)."""
        path = self._state_file(p)
        if not path.exists():
            return {}
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="np") as f:
                entries = json.loads((f.metadata() or {}).get("entries", "[]"))
            return {(m, spec, int(s), int(ref)): (key, tag, name) for m, spec, s, ref, key, tag, name in entries}
        except Exception:  # noqa: BLE001 — a damaged cache file is not an error: its cells are recomputed
            return {}

    def _load_states(self, p) -> dict[tuple, tuple[str, Any]]:
        entries = self._entries(p)
        if not entries:
            return {}
        try:
            arrays = load_file(str(self._state_file(p)))
        except Exception:  # noqa: BLE001 — as above
            return {}
        return {k: (key, _unpack(tag, arrays.get(name) if name else None)) for k, (key, tag, name) in entries.items()
                if name is None or name in arrays}


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _with(rows: list[tuple], run: str, part, step: int, ref: int, spec: str, key: str) -> list[tuple]:
    """Cell rows with spec and key; a cell without rows (a matrix metric on a vector) keeps one marker row."""
    if not rows:
        return [(run, step, ref, part.name, part.layer, part.expert, part.kind, None, float("nan"), spec, key)]
    return [(*r, spec, key) for r in rows]
