"""The one loop: module-major streaming over checkpoints, one decomposition per (module, step), rows out.

For each run and each selected tensor: read W_ref (W₀, the previous step, or a fixed step), then that
tensor from every checkpoint in step order; for each reported part form ΔW = W_t − W_ref in float32, run
every metric on the shared view, free. The next read is prefetched on a thread while the current one is
computed (reads release the GIL). Peak memory is W_ref + W_t + ΔW (float32) + one prefetched tensor +
the Gram on the small side: a few copies of the largest tensor, independent of how many checkpoints or
layers there are (``against=prev`` also keeps W₀ of the current tensor, for the metrics defined against W₀;
a fixed ``against=N`` reads W₀ only if a metric asks for it). Only this module walks checkpoints; metrics are
pure functions of one view.

LoRA runs (:mod:`opd_dynamics.io.lora`): a step's tensor is then either dense (``modules_to_save``) or a
:class:`~opd_dynamics.linalg.Factored` update on top of W₀. Updates between factored states stay factored
(ΔW_t = s·B_t A_t, or the rank ≤ 2r difference of two steps), so the view's spectrum comes from the factors and
ΔW is formed only if a metric reads ``view.delta``.
"""
from __future__ import annotations

import ctypes
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Iterator

import torch

from .errors import CheckpointError, OPDError
from .io.discovery import Run
from .io.reader import Reader, nbytes, read_state
from . import linalg
from .linalg import Factored
from .metrics.registry import Spec, settings_suffixes
from .naming import Part, parts
from .select import Selector
from .view import ModuleView

#: metric families whose metrics read the ΔW spectrum (so its Gram is formed for every matrix view)
SPECTRAL_FAMILIES = ("spectrum", "direction")

Row = tuple  # (run, step, ref_step, module, layer, expert, kind, metric, value)


@dataclass(frozen=True)
class TensorPlan:
    run: Run
    tensor: str
    parts: tuple[Part, ...]
    ndim: int


def _tied(name: str, config: dict) -> bool:
    return name.startswith("lm_head") and bool(config.get("tie_word_embeddings", False))


def plan(run: Run, selector: Selector) -> list[TensorPlan]:
    """Tensors to read for ``run`` after checking every checkpoint holds them with the base's shape."""
    base, config = run.base, run.base.config
    base_keys = set(base.keys())
    for step, ck in run.steps.items():
        keys = set(ck.keys())
        for name in sorted(base_keys - keys):  # a partial reader (LoRA) holds only the modules it trains
            if not ck.partial and not _tied(name, config) and base.dtype(name).is_floating_point:
                raise CheckpointError(f"{ck.path}: tensor {name!r} is missing (the base {base.path} has it)",
                                      hint="re-save the checkpoint, or drop this step with --steps")
        for name in sorted(keys - base_keys):
            if not _tied(name, config) and ck.dtype(name).is_floating_point:
                raise CheckpointError(f"{ck.path}: tensor {name!r} is not in the base {base.path}",
                                      hint="check --base names the model this run started from")
    out = []
    for name in base.keys():
        if not base.dtype(name).is_floating_point or any(name not in ck for ck in run.steps.values()):
            continue  # integer buffers; tied heads absent from the checkpoints
        shape = base.shape(name)
        for step, ck in run.steps.items():
            if ck.shape(name) != shape:
                raise CheckpointError(f"{ck.file_of(name)}: tensor {name!r} has shape {list(ck.shape(name))}, "
                                      f"the base has {list(shape)}", hint="check --base names the model this run started from")
        chosen = tuple(p for p in parts(name, shape, config)
                       if selector.matches(p, len(shape) - (p.index is not None)))  # an expert's slab is a matrix
        if chosen:
            out.append(TensorPlan(run, name, chosen, len(shape)))
    return out


#: tensors larger than this are not read ahead: overlapping their read with the previous compute would add one more
#: copy of the largest tensor (an embedding) to peak memory, for a read that is a small share of its compute
PREFETCH_MAX_BYTES = 64 * 2**20


def _prefetched(tasks: Iterable[tuple[Callable[[], object], int]]) -> Iterator[object]:
    """Run read tasks one ahead on a worker thread, yielding results in order; big ones are read on demand."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for task, nbytes in tasks:
            if nbytes > PREFETCH_MAX_BYTES:
                if pending is not None:
                    yield pending.result()
                    pending = None
                yield pool.submit(task).result()
                continue
            fut = pool.submit(task)
            if pending is not None:
                yield pending.result()
            pending = fut
        if pending is not None:
            yield pending.result()


_HEAP_LIMITED = False


def limit_heap_growth(threshold: int = 1 << 20) -> bool:
    """Ask glibc to serve allocations ≥ ``threshold`` bytes with mmap, so freed tensors go back to the OS.

    Why: the loop allocates and frees tensor-sized buffers of many sizes from two threads; glibc's default
    (a dynamic threshold that grows to 32 MB) keeps freed multi-MB blocks in fragmented heaps, and peak RSS on a
    Qwen2-0.5B-shaped model rose from 1.5 GB to 2.5 GB. Called once per process by :func:`run_metrics`; set
    ``OPD_DYNAMICS_KEEP_MALLOC=1`` to leave the allocator alone. A no-op off glibc.
    """
    global _HEAP_LIMITED
    if _HEAP_LIMITED or os.environ.get("OPD_DYNAMICS_KEEP_MALLOC"):
        return _HEAP_LIMITED
    try:
        libc = ctypes.CDLL("libc.so.6")
        _HEAP_LIMITED = bool(libc.mallopt(-3, int(threshold)))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        _HEAP_LIMITED = False
    return _HEAP_LIMITED


def _read(ck: Reader, name: str, device: torch.device) -> Callable[[], torch.Tensor | Factored]:
    return lambda: read_state(ck, name).to(device)  # a partial (LoRA) reader answers ΔW, maybe factored


def _part(t: torch.Tensor | Factored, p: Part) -> torch.Tensor | Factored:
    if p.index is not None:  # one expert of a fused [E, ...] tensor
        t = t[p.index]
    if t.ndim != 2:
        return t
    t = t.T if p.transpose else t
    if p.rows is None:
        return t
    return t.rows(*p.rows) if isinstance(t, Factored) else t[p.rows[0]:p.rows[1]]


class _Base:
    """W₀ of one tensor: the first read when measuring against the base (or prev), else read on first use."""

    def __init__(self, p: TensorPlan, device: torch.device, raw: torch.Tensor | None):
        self.p, self.device, self.raw = p, device, raw

    def get(self) -> torch.Tensor:
        if self.raw is None:
            self.raw = self.p.run.base.get_tensor(self.p.tensor).to(self.device)
        return self.raw


def _ref_steps(steps: list[int], against: str | int) -> dict[int, int]:
    if against == "base":
        return {s: 0 for s in steps}
    if against == "prev":
        return {s: r for s, r in zip(steps, [0] + steps[:-1])}
    if isinstance(against, int):
        if against != 0 and against not in steps:
            raise OPDError(f"--against {against}: no checkpoint at that step; steps are {steps}", hint="pick one of them")
        return {s: against for s in steps if s != against}
    raise OPDError(f"--against {against!r} not understood", hint="use base, prev or a step number")


@dataclass(frozen=True)
class Job:
    """The settings every task of one analysis shares (small and picklable: it travels to workers)."""

    specs: tuple[Spec, ...]
    against: str | int = "base"
    device: str = "cpu"
    spectrum_method: str = "gram"
    nonfinite: str = "error"


def run_metrics(runs: list[Run], specs: list[Spec], *, selector: Selector = Selector(), against: str | int = "base",
                device: str | torch.device = "cpu", spectrum_method: str = "gram", nonfinite: str = "error",
                progress: bool = True, memo=None, executor=None) -> list[Row]:
    """Compute every metric for every selected module of every run; return long-table rows.

    ``memo`` (:class:`opd_dynamics.cache.Memo`) makes the run incremental: it says which (step, metric) cells of
    each tensor are still to compute, supplies the rest (rows, and trajectory states), and keeps what is computed;
    only the checkpoints a missing cell needs (and their references) are read.

    ``executor`` (:mod:`opd_dynamics.executors`): ``None``/``"local"`` runs :func:`stream` here; ``"processes[:N]"``,
    ``"ray[:ADDRESS]"`` or any ``concurrent.futures.Executor`` run it as tasks of whole tensors elsewhere, with the
    same rows in the same order.
    """
    if nonfinite not in ("error", "nan"):
        raise OPDError(f"--nonfinite {nonfinite!r} not understood", hint="use error or nan")
    built(specs)  # unknown metrics and bad settings fail here, before any reading
    plans = [p for run in runs for p in plan(run, selector)]
    for p in plans:
        _ref_steps(sorted(p.run.steps), against)  # a bad --against fails here, before any reading
    job = Job(tuple(specs), against, str(torch.device(device)), spectrum_method, nonfinite)
    from .executors import execute

    return execute(plans, job, executor, memo=memo, progress=progress)


def built(specs) -> list[tuple]:
    """(spec, info, metric) per spec, each info carrying the column suffix that tells repeated metrics apart."""
    return [(s, replace(s.info, suffix=suffix), s.build()) for s, suffix in zip(specs, settings_suffixes(specs))]


def todo_of(p: TensorPlan, job: Job, memo=None) -> tuple[dict[int, int], dict[int, object], list[int]]:
    """(refs, todo, read order) of one tensor: {step: ref step}, the cells still to compute, the steps to read."""
    refs = _ref_steps(sorted(p.run.steps), job.against)
    todo = memo.todo(p, refs) if memo is not None else {s: None for s in refs}
    first = 0 if job.against in ("base", "prev", 0) else job.against
    return refs, todo, _read_order(refs, todo, job.against, first)


def stream(plans: list[TensorPlan], job: Job, *, memo=None, on_read: Callable[[int], object] | None = None) -> list[Row]:
    """The one loop: each tensor streamed over the steps it needs, reads prefetched one ahead; rows out.

    One call is one task of an executor (every tensor for ``local``, a block of whole tensors elsewhere). A task
    that cannot keep trajectory states itself gets a ``memo`` with ``finalizes = False`` (a recorder): it records
    the computed cells and states, and the driver finalises (:mod:`opd_dynamics.executors`).
    """
    device = torch.device(job.device)
    against, spectrum_method, nonfinite = job.against, job.spectrum_method, job.nonfinite
    limit_heap_growth()
    metrics = built(job.specs)
    keep_after = any(info.needs_after for _, info, _ in metrics)
    # ‖ΔW‖_F (and the NaN check) from the Gram's trace when a spectral metric forms that Gram anyway
    gram_norm = any(info.family in SPECTRAL_FAMILIES for _, info, _ in metrics)
    schedule = [(p, *todo_of(p, job, memo)) for p in plans]
    rows: list[Row] = []
    tick = on_read or (lambda n: None)

    def tasks():
        for p, _, _, order in schedule:
            for s in order:
                ck = p.run.base if s == 0 else p.run.steps[s]
                yield _read(ck, p.tensor, device), nbytes(ck, p.tensor)

    reader = _prefetched(tasks())
    try:
        for p, refs, todo, order in schedule:
            base = _Base(p, device, None)
            states: dict[tuple[str, int], dict[int, object]] = {}
            if memo is not None:
                states.update(memo.states(p, refs, todo))
            work = _TensorWork(p, base, metrics, states, {part.name: {} for part in p.parts}, keep_after,
                               spectrum_method, nonfinite, memo, gram_norm)
            held: dict[int, object] = {}  # the raw tensors a later step is measured against
            for s in order:
                raw = next(reader)
                tick(1)
                if s == 0:
                    base.raw = raw
                if s in todo:
                    ref_raw = held[refs[s]]
                    for part in p.parts:
                        out = work.view(part, s, refs[s], raw, ref_raw, todo[s])
                        if memo is None:
                            rows.extend(out)
                    del ref_raw
                held = {s: raw} if against == "prev" else (held or {s: raw})
                del raw
            if memo is not None:  # every per-step cell, kept or computed, in the order a fresh run emits them
                rows.extend(memo.rows(p, refs))
            if getattr(memo, "finalizes", True):
                rows.extend(finalize(p, metrics, states, refs))
            if memo is not None:
                memo.done(p)
            del held, base, work
    finally:
        reader.close()
    return rows


def finalize(p: TensorPlan, built, states: dict[tuple[str, int], dict[int, object]], refs: dict[int, int]) -> list[Row]:
    """Rows of the trajectory metrics of one tensor from their per-step states."""
    rows: list[Row] = []
    for part in p.parts:
        for i, (spec, info, m) in enumerate(built):
            st = states.get((part.name, i))
            if st:
                for step, value in m.finalize(dict(sorted(st.items()))).items():
                    rows.extend(_emit(p, part, step, refs[step], info, value))
    return rows


def _read_order(refs: dict[int, int], todo: dict[int, object], against, first: int) -> list[int]:
    """Steps to read for one tensor, in order (0 = the base): the steps to compute and what they are measured against."""
    if not todo:
        return []
    if against == "prev":
        return sorted(set(todo) | {refs[s] for s in todo})
    return [first] + sorted(todo)


def _emit(p: TensorPlan, part: Part, step: int, ref_step: int, info, value) -> Iterator[Row]:
    values = value if isinstance(value, dict) else {info.outputs[0]: value}
    for metric, v in values.items():
        yield (p.run.name, step, ref_step, part.name, part.layer, part.expert, part.kind, metric + info.suffix, float(v))


def _finite(x: torch.Tensor | Factored) -> bool:
    if isinstance(x, Factored):
        return bool(torch.isfinite(x.b).all() and torch.isfinite(x.a).all())
    return bool(torch.isfinite(x).all())


def _dense(state: torch.Tensor | Factored, base: _Base, part: Part) -> torch.Tensor:
    """W as a tensor: stored weights as they are, a factored state as W₀ + ΔW in float32."""
    if not isinstance(state, Factored):
        return _part(state, part)
    return _part(base.get(), part).to(torch.float32, copy=True).add_(_part(state, part).dense(torch.float32))


def _update(raw, ref_raw, ref_step: int, base: _Base, part: Part, keep_after: bool):
    """(ΔW, W_ref, W_t or None) for one part; ΔW stays factored when both ends are W₀ + factored updates."""
    if not isinstance(raw, Factored) and not isinstance(ref_raw, Factored):
        ref_part = _part(ref_raw, part)
        delta = linalg.difference(_part(raw, part), ref_part)
        return delta, ref_part, (_part(raw, part) if keep_after else None)
    ref_part = _dense(ref_raw, base, part)
    after = _dense(raw, base, part) if keep_after else None
    if isinstance(raw, Factored) and (isinstance(ref_raw, Factored) or ref_step == 0):
        delta = _part(raw, part) if ref_step == 0 else _part(raw, part) - _part(ref_raw, part)
    else:  # a dense state on one side (modules_to_save): no factored form
        w_t = after if after is not None else _dense(raw, base, part)
        delta = linalg.difference(w_t, ref_part)
    return delta, ref_part, after


@dataclass
class _TensorWork:
    """What every (part, step) view of one tensor shares while its steps stream past.

    ``metrics`` is :func:`built` of the job's specs; ``states`` the trajectory states {(part, metric index): {step:
    state}}; ``cache`` the per-part spectrum caches {part name: {...}} that :class:`ModuleView` fills; ``memo`` the
    incremental cache (or ``None``).
    """

    p: TensorPlan
    base: _Base
    metrics: list
    states: dict
    cache: dict
    keep_after: bool
    method: str
    nonfinite: str
    memo: object = None
    gram_norm: bool = False

    def view(self, part: Part, step: int, ref_step: int, raw, ref_raw, want=None) -> list[Row]:
        """Rows of every metric (those in ``want``, when given) on one part at one step; trajectory states kept."""
        p, base, memo = self.p, self.base, self.memo
        delta, ref_part, after = _update(raw, ref_raw, ref_step, base, part, self.keep_after)
        view = ModuleView(p.run.name, part, step, ref_step, delta, ref_part, after, self.method, self.cache[part.name],
                          base_fn=lambda: _part(base.get(), part), norm_from_gram=self.gram_norm)
        finite = (view.factored is None or _finite(view.factored)) and math.isfinite(view.delta_norm)
        if not finite:
            bad = p.run.steps[step] if not _finite(raw) else (
                p.run.base if ref_step == 0 else p.run.steps[ref_step])
            where = f"{bad.file_of(p.tensor)}: tensor {p.tensor!r} has NaN/Inf values"
            if self.nonfinite == "error":
                raise CheckpointError(where, hint="drop this step with --steps, or pass --nonfinite nan to record NaN rows")
            warnings.warn(where + "; its metrics are recorded as NaN", stacklevel=2)
        out = []
        for i, (spec, info, m) in enumerate(self.metrics):
            if want is not None and i not in want:
                continue  # the memo has this cell
            if info.matrix and not view.is_matrix:
                if memo is not None:
                    memo.put(p, part, step, ref_step, i, rows=[])
                continue
            if info.trajectory:
                state = m.collect(view) if finite else None
                self.states.setdefault((part.name, i), {})[step] = state
                if memo is not None:
                    memo.put(p, part, step, ref_step, i, state=state)
                continue
            value = m(view) if finite else {o: math.nan for o in info.outputs}
            cell = list(_emit(p, part, step, ref_step, info, value))
            if memo is not None:
                memo.put(p, part, step, ref_step, i, rows=cell)
            out.extend(cell)
        return out
