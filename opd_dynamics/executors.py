"""Where the engine's tasks run: ``local``, ``processes[:N]`` or ``ray[:ADDRESS]``, all one ``concurrent.futures.Executor``.

A task is a block of whole tensors of one run (:func:`opd_dynamics.engine.stream` over them: every step of a tensor
in one task, so W₀ is read once and trajectory metrics finalise inside the task). A task carries a light
description of its run (the :func:`~opd_dynamics.io.discovery.open_run` arguments: absolute paths, steps, options),
re-opens the checkpoints where it runs and returns only rows; the driver puts the rows back in plan order, so every
executor gives the ``local`` table, value for value and row for row.

- ``local``: every tensor in this process (:func:`run_local`): the prefetching loop, with the tensors spread over
  the compute threads (one BLAS thread each) when there are several.
- ``processes[:N]``: N worker processes on this machine (default: one per CPU this process may use, or one per GPU
  with ``device="cuda"`` and several GPUs); each gets ``cpus // N`` torch threads, so workers × threads never exceed
  ``os.sched_getaffinity``.
- ``ray[:ADDRESS]``: tasks on a Ray cluster: ``ray`` starts a local one for the call, ``ray:auto`` joins the cluster
  this machine belongs to, ``ray:ray://host:10001`` connects a Ray client. Options after commas:
  ``ray:auto,num_cpus=2,num_gpus=0.25,retries=3`` (resources per task; fractional GPUs let several decompositions
  share one). A killed worker's task is re-run (``retries``); before any work every node checks it can read every
  checkpoint, and one that cannot is a one-line error naming it. Ray is imported only here, only when asked for.
- any other ``concurrent.futures.Executor`` (e.g. Dask's ``client.get_executor()``): tasks are plain picklable calls.

>>> ExecutorSpec.parse("ray:ray://head:10001,num_gpus=0.5")
ExecutorSpec(kind='ray', workers=None, address='ray://head:10001', num_cpus=1.0, num_gpus=0.5, retries=3)
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import warnings
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator

import torch
from tqdm.auto import tqdm

from .engine import PREFETCH_MAX_BYTES, Job, Row, TensorPlan, built, finalize, stream, todo_of
from .io.reader import nbytes
from .machine import blas_threads, set_blas_threads  # noqa: F401  (re-exported)
from .errors import OPDError

KINDS = ("local", "processes", "ray")


def cpu_budget() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads(workers: int = 1) -> int:
    """Compute threads (torch and OpenBLAS) for each of ``workers`` processes sharing the CPUs this process may use.

    ``workers × threads`` never exceeds the affinity mask. For one process (``local``) it is also at most what the
    caller gave torch (``torch.set_num_threads`` / ``OMP_NUM_THREADS``) and at most the CPUs other processes leave
    free now (:func:`opd_dynamics.machine.others_running`): oversubscribed BLAS/OpenMP threads spin-wait on each other,
    and on a busy 2-core machine two threads each were 28× slower than one (docs/performance.md, "Threads").
    ``OPD_DYNAMICS_THREADS=N`` overrides the choice (still within ``cpus // workers``).
    """
    cpus = cpu_budget()
    per = max(1, cpus // max(1, workers))
    forced = os.environ.get("OPD_DYNAMICS_THREADS", "").strip()
    if forced.isdigit() and int(forced) > 0:
        return min(int(forced), per)
    if workers > 1:
        return per
    from .machine import others_running

    busy = others_running() / (os.cpu_count() or cpus)  # the machine's busy fraction, this process not counted
    free = round(cpus * max(0.0, 1.0 - busy))
    return max(1, min(per, torch.get_num_threads(), free))


@contextmanager
def compute_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch and OpenBLAS threads, then give the caller's settings back."""
    before, blas = torch.get_num_threads(), blas_threads()
    limit_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        if blas is not None:
            set_blas_threads(blas)


def limit_threads(n: int) -> None:
    """Cap this process's compute threads at ``n``: torch's intra-op pool and numpy's OpenBLAS pool (which does not
    follow ``torch.set_num_threads``; without this each worker would run one BLAS thread per CPU)."""
    torch.set_num_threads(n)
    set_blas_threads(n)


@dataclass(frozen=True)
class ExecutorSpec:
    """``kind[:target][,option=value...]`` parsed: see the module docstring."""

    kind: str = "local"
    workers: int | None = None      # processes: how many; ray: how many to start for a local cluster
    address: str | None = None      # ray: None (start one), "auto", "ray://host:port", "host:port"
    num_cpus: float = 1.0           # ray: CPUs reserved per task (also its torch threads)
    num_gpus: float | None = None   # ray: GPUs per task (None: 1 with device cuda, else 0)
    retries: int = 3                # ray: re-runs of a task whose worker died

    @classmethod
    def parse(cls, text: str) -> "ExecutorSpec":
        head, *opts = [t.strip() for t in str(text).split(",")]
        kind, _, target = head.partition(":")
        if kind not in KINDS:
            raise OPDError(f"--executor {text!r}: unknown executor {kind!r}",
                           hint="use local, processes[:N] or ray[:ADDRESS] (auto, ray://host:port)")
        spec = cls(kind)
        if kind == "processes" and target:
            if not target.isdigit() or int(target) < 1:
                raise OPDError(f"--executor {text!r}: {target!r} is not a worker count", hint="e.g. processes:4")
            spec = replace(spec, workers=int(target))
        elif kind == "ray" and target:
            spec = replace(spec, address=target)
        elif target:
            raise OPDError(f"--executor {text!r}: local takes no target", hint="use local")
        for opt in opts:
            key, _, value = opt.partition("=")
            types = {"num_cpus": float, "num_gpus": float, "retries": int, "workers": int}
            if kind != "ray" or key not in types:
                raise OPDError(f"--executor {text!r}: option {key!r} not understood",
                               hint="ray takes num_cpus=, num_gpus=, retries=, workers=")
            try:
                spec = replace(spec, **{key: types[key](value)})
            except ValueError:
                raise OPDError(f"--executor {text!r}: {key}={value!r} is not a number", hint=f"e.g. {key}=1") from None
        return spec


# -- tasks --------------------------------------------------------------------------------------------------------
@dataclass
class Task:
    """A block of whole tensors of one run: the run itself (same process) or its ``source`` (re-opened remotely)."""

    run: Any                                 # Run (local) or its source dict (anywhere)
    tensors: tuple[tuple[str, tuple, int], ...]  # (tensor, parts, ndim) per plan
    job: Job
    reads: int
    threads: int | None = None               # torch threads where it runs (None: leave as is)
    cost: int = 0                            # elements read, for scheduling the costliest first
    todos: dict[str, dict] | None = None     # incremental runs: {tensor: {step: spec indices to compute}}

    def plans(self) -> list[TensorPlan]:
        run = self.run if not isinstance(self.run, dict) else reopen(self.run)
        return [TensorPlan(run, name, parts, ndim) for name, parts, ndim in self.tensors]


@dataclass
class Result:
    rows: list[Row]
    warnings: list[tuple[str, type]]
    node: str
    cells: dict[str, list] | None = None     # incremental runs: {tensor: [(part, step, ref, spec index, put kwargs)]}


class Recorder:
    """A task's stand-in for the driver's :class:`~opd_dynamics.cache.Memo`: it is told which cells to compute
    and records them (rows, and trajectory states on the CPU); the driver replays them into the memo and finalises
    the trajectory metrics there, with the states the memo kept."""

    finalizes = False

    def __init__(self, todos: dict[str, dict]):
        self.todos, self.cells = todos, {}

    def todo(self, p, refs):
        return self.todos[p.tensor]

    def states(self, p, refs, todo):
        return {}

    def put(self, p, part, step, ref_step, i, **kw):
        if isinstance(kw.get("state"), torch.Tensor):
            kw["state"] = kw["state"].cpu()
        self.cells.setdefault(p.tensor, []).append((part, step, ref_step, i, kw))

    def rows(self, p, refs):
        return []

    def done(self, p):
        pass


_OPEN: dict[str, Any] = {}


def node_name() -> str:
    """This machine, as an error message names it (with the Ray node id when inside a Ray worker)."""
    name = socket.gethostname()
    ray = sys.modules.get("ray")  # never imported here: only a Ray worker has it loaded
    try:
        if ray is not None and ray.is_initialized():
            name += f" (ray node {ray.get_runtime_context().get_node_id()[:12]})"
    except Exception:  # not inside Ray, or an older Ray without the context API: the host name alone
        pass
    return name


def reopen(source: dict):
    """The run a task names, opened here (cached per process); a checkpoint this node cannot read is named."""
    from .io.discovery import open_run

    key = repr(sorted(source.items()))
    if key not in _OPEN:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the driver already warned about what discovery finds
                run = open_run(source["root"], base=source["base"], name=source["name"], steps=source["steps"],
                               allow_pickle=source["allow_pickle"], lora_scaling=source["lora_scaling"],
                               warn_missing=False, storage=source.get("storage"),
                               ds_weights=source.get("ds_weights", "fp32"))
        except (OPDError, OSError) as e:
            raise OPDError(f"node {node_name()} cannot read run {source['name']!r}: {getattr(e, 'message', e)}",
                           hint="put the checkpoints on storage every worker mounts at the same path "
                                "(or analyse with --executor local)") from None
        if len(_OPEN) >= 4:
            _OPEN.pop(next(iter(_OPEN)))
        _OPEN[key] = run
    return _OPEN[key]


def run_task(task: Task) -> Result:
    """Run one task where it lands: its torch threads, its checkpoints re-opened, its warnings kept for the driver."""
    if task.threads:
        limit_threads(min(task.threads, cpu_budget()))
    memo = Recorder(task.todos) if task.todos is not None else None
    with warnings.catch_warnings(record=True) as caught:  # (per process: threads sharing one would interleave)
        warnings.simplefilter("always")
        rows = stream(task.plans(), task.job, memo=memo)
    return Result(rows, [(str(w.message), w.category) for w in caught], node_name(),
                  memo.cells if memo is not None else None)


def check_visible(source: dict) -> str:
    """Open a run's checkpoints on this node (a probe run once per node before any work); returns the node."""
    reopen(source)
    return node_name()


def make_tasks(plans: list[TensorPlan], job: Job, workers: int, threads: int | None,
               todos: list[tuple] | None = None) -> list[Task]:
    """Consecutive tensors of one run grouped into blocks of similar cost (≈ 4 blocks per worker), in plan order.

    ``todos``: per plan, :func:`~opd_dynamics.engine.todo_of` with the driver's memo (incremental runs).
    """
    orders = [t[2] for t in todos] if todos else [todo_of(p, job)[2] for p in plans]

    costs = [_elements(plans[i]) * len(orders[i]) for i in range(len(plans))]
    target = (sum(costs) or 1) / (4 * max(1, workers))
    tasks, block, acc = [], [], 0
    for i, p in enumerate(plans):
        block.append(i)
        acc += costs[i]
        nxt = plans[i + 1] if i + 1 < len(plans) else None
        if nxt is None or nxt.run is not p.run or acc >= target:
            if p.run.source is None:
                raise OPDError(f"run {p.run.name!r} was built by hand, so workers cannot re-open it",
                               hint="open it with opd_dynamics.open_runs / open_run, or use executor='local'")
            tasks.append(Task(p.run.source, tuple((plans[j].tensor, plans[j].parts, plans[j].ndim) for j in block), job,
                              sum(len(orders[j]) for j in block), threads, acc,
                              {plans[j].tensor: todos[j][1] for j in block} if todos else None))
            block, acc = [], 0
    return tasks


# -- executors ----------------------------------------------------------------------------------------------------
class InlineExecutor(Executor):
    """``local``: runs each call when submitted, in this process."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as e:  # handed to the caller through the future, as every executor does
            fut.set_exception(e)
        return fut


def _init_worker(threads: int, gpus) -> None:
    limit_threads(threads)
    if gpus is not None:
        torch.cuda.set_device(gpus.get())


def _ray():
    try:
        import ray
    except ImportError:
        raise OPDError("--executor ray needs Ray, which is not installed",
                       hint="pip install 'opd-dynamics[ray]'") from None
    return ray


class RayExecutor(Executor):
    """Tasks as Ray remote functions (``max_retries`` re-runs a task whose worker died); futures via ``ObjectRef``."""

    def __init__(self, spec: ExecutorSpec, *, gpu: bool):
        ray = self.ray = _ray()
        self.own = not ray.is_initialized()
        if self.own:
            kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if spec.address:
                kw["address"] = spec.address
            else:  # a new local cluster for this call (never a stale one), on the CPUs this process may use
                kw.update(address="local", num_cpus=spec.workers or cpu_budget(), include_dashboard=False)
            ray.init(**kw)
        num_gpus = spec.num_gpus if spec.num_gpus is not None else (1.0 if gpu else 0.0)
        self.options = {"num_cpus": spec.num_cpus, "num_gpus": num_gpus, "max_retries": spec.retries}
        self._remote: dict[Any, Any] = {}

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(**self.options)(fn)
        return self._remote[fn].remote(*args, **kwargs).future()

    def probe(self, sources: list[dict]) -> None:
        """Every alive node opens every run before any work, so a path one node cannot see fails now, naming it."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        probe = self.ray.remote(num_cpus=0, max_retries=0)(check_visible)
        refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(s)
                for n in self.ray.nodes() if n.get("Alive") for s in sources]
        for ref in refs:
            try:
                self.ray.get(ref)
            except Exception as e:
                raise _unwrap(e) from None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self.own:
            self.ray.shutdown()


def _unwrap(e: BaseException) -> BaseException:
    """Ray wraps a task's exception (with a remote traceback); the user's one-line error is its cause."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, OPDError) else e


@contextmanager
def open_executor(spec: ExecutorSpec, job: Job, sources: list[dict]) -> Iterator[tuple[Executor, int, int | None]]:
    """(executor, workers, torch threads per task) for a spec; shut down on exit."""
    gpu = torch.device(job.device).type == "cuda"
    if spec.kind == "processes":
        import multiprocessing as mp

        ngpu = torch.cuda.device_count() if gpu and torch.device(job.device).index is None else 0
        workers = spec.workers or (ngpu if ngpu > 1 else cpu_budget())
        if not gpu and workers > cpu_budget():
            warnings.warn(f"processes:{workers} on {cpu_budget()} CPUs: using {cpu_budget()} workers", stacklevel=4)
            workers = cpu_budget()
        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and locks mid-state
        queue = None
        if ngpu > 1:
            queue = ctx.Queue()
            for i in range(workers):
                queue.put(i % ngpu)
        threads = default_threads(workers)
        ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(threads, queue))
        try:
            yield ex, workers, None
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        return
    ex = RayExecutor(spec, gpu=gpu)
    try:
        if not (ex.own and not spec.address):  # a cluster started here for the call is this machine: nothing to probe
            ex.probe(sources)
        cpus = ex.ray.cluster_resources().get("CPU", 1)
        yield ex, max(1, int(cpus // max(spec.num_cpus, 1e-9))), max(1, int(spec.num_cpus))
    finally:
        ex.shutdown()


def execute(plans: list[TensorPlan], job: Job, executor: str | ExecutorSpec | Executor | None = None, *,
            memo=None, progress: bool = True) -> list[Row]:
    """Run the engine's loop over ``plans`` on an executor; rows in plan order, one progress bar here."""
    spec = executor if isinstance(executor, (ExecutorSpec, Executor)) else ExecutorSpec.parse(executor or "local")
    todos = [todo_of(p, job, memo) for p in plans]
    bar = tqdm(total=sum(len(t[2]) for t in todos), disable=not progress, desc="reading tensors", unit="tensor",
               leave=False)
    try:
        if isinstance(spec, ExecutorSpec) and spec.kind == "local":
            return run_local(plans, job, todos, memo=memo, on_read=bar.update)
        if isinstance(spec, Executor):  # the caller's own executor: theirs to shut down
            tasks = make_tasks(plans, job, 4, None, todos if memo else None)
            results = _gather(spec, tasks, bar)
        else:
            sources = list({repr(sorted(p.run.source.items())): p.run.source for p in plans if p.run.source}.values())
            with open_executor(spec, job, sources) as (ex, workers, threads):
                tasks = make_tasks(plans, job, workers, threads, todos if memo else None)
                results = _gather(ex, tasks, bar)
    finally:
        bar.close()
    if memo is None:
        return [row for res in results for row in res.rows]
    cells = {(t.run["name"], name): res.cells.get(name, []) for t, res in zip(tasks, results) for name, *_ in t.tensors}
    return _replay(plans, job, todos, cells, memo)


def run_local(plans: list[TensorPlan], job: Job, todos: list[tuple], *, memo=None,
              on_read=None, threads: int | None = None) -> list[Row]:
    """``local``: every tensor in this process, the tensors spread over the compute threads.

    With one compute thread (or a GPU) this is :func:`~opd_dynamics.engine.stream` over every tensor. With N > 1 on
    the CPU, tensors over :data:`~opd_dynamics.engine.PREFETCH_MAX_BYTES` (embeddings, an untied ``lm_head``) run
    first, one at a time on all N threads, then the others run N at a time, each on one torch and one OpenBLAS
    thread. The float64 Gram, ``eigvalsh`` and the subspace iteration of one layer matrix scale poorly over two
    threads (docs/performance.md), and whole tensors in parallel share nothing. Fewer run at a time (with N // k
    threads each) when k tensors' working sets would need more than the largest tensor alone or
    :data:`LOCAL_MEMORY` (many cores, large layers), so peak memory stays a few copies of the largest tensor. The
    rows come back in plan order; with one thread per tensor they are bit for bit those of a one-thread run
    (``OPD_DYNAMICS_THREADS=1``).
    """
    threads = threads or default_threads(1)
    if threads < 2 or torch.device(job.device).type != "cpu" or len(plans) < 2:
        with compute_threads(threads):
            return stream(plans, job, memo=memo, on_read=on_read)
    from . import linalg

    linalg.backend()  # the BLAS choice is measured once per machine: before the threads, not by two of them at once
    big = [i for i, p in enumerate(plans) if nbytes(p.run.base, p.tensor) > PREFETCH_MAX_BYTES]
    small = sorted(set(range(len(plans))) - set(big), key=lambda i: -_elements(plans[i]) * len(todos[i][2]))
    # as many tensors at a time as keep their working sets within what the largest tensor alone needs (≥ 1 GiB)
    need = [_footprint(p) for p in plans]
    room = max([need[i] for i in big] + [LOCAL_MEMORY])
    workers = max(1, min(threads, room // max([need[i] for i in small] or [1])))

    def one(i: int) -> Result:
        rec = Recorder({plans[i].tensor: todos[i][1]}) if memo is not None else None
        rows = stream([plans[i]], job, memo=rec, on_read=on_read)
        return Result(rows, [], "", rec.cells if rec is not None else None)

    results: dict[int, Result] = {}
    failed: dict[int, BaseException] = {}
    with compute_threads(threads):
        for i in big:
            try:
                results[i] = one(i)
            except Exception as e:  # the tensors before it in plan order still run: one of them may fail first
                failed[i] = e
                break
    if failed:
        small = [i for i in small if i < min(failed)]
    with compute_threads(threads // workers), ThreadPoolExecutor(workers, thread_name_prefix="opd-local") as pool:
        futures = {pool.submit(one, i): i for i in small}
        for fut in as_completed(futures):
            if fut.cancelled():
                continue
            if fut.exception() is not None:
                failed[futures[fut]] = fut.exception()
                for f, j in futures.items():  # only what comes after it in plan order: an earlier one may fail first
                    if j > futures[fut]:
                        f.cancel()
            else:
                results[futures[fut]] = fut.result()
    if failed:  # the error a one-thread run would have met first: the failing tensor earliest in plan order
        raise failed[min(failed)]
    if memo is None:
        return [row for i in range(len(plans)) for row in results[i].rows]
    cells = {(plans[i].run.name, plans[i].tensor): results[i].cells.get(plans[i].tensor, []) for i in results}
    return _replay(plans, job, todos, cells, memo)


def _elements(p: TensorPlan) -> int:
    n = 1
    for d in p.run.base.shape(p.tensor):
        n *= d
    return n


#: the memory ``local`` may give to tensors analysed at the same time, when no single tensor needs more on its own
LOCAL_MEMORY = 1 << 30


def _footprint(p: TensorPlan) -> int:
    """Bytes one tensor holds while it is analysed: W_ref, W_t and the next read as stored, ΔW in float32, one float64
    block (:data:`opd_dynamics.linalg.BLOCK_ELEMS`) and the float64 Gram of the smaller side."""
    from .linalg import BLOCK_ELEMS

    e, shape = _elements(p), p.run.base.shape(p.tensor)
    small = min(shape[-2:]) if len(shape) >= 2 else 1
    return 3 * nbytes(p.run.base, p.tensor) + 4 * e + 8 * min(e, BLOCK_ELEMS) + 8 * small * small


def _replay(plans, job: Job, todos, cells: dict[tuple, list], memo) -> list[Row]:
    """Incremental runs: the tasks' cells into the memo, tensor by tensor in plan order, as :func:`stream` does."""
    metrics = built(job.specs)
    rows: list[Row] = []
    for p, (refs, todo, _) in zip(plans, todos):
        states = memo.states(p, refs, todo)
        for part, step, ref, i, kw in cells[(p.run.name, p.tensor)]:
            memo.put(p, part, step, ref, i, **kw)
            if "state" in kw:
                states.setdefault((part.name, i), {})[step] = kw["state"]
        rows.extend(memo.rows(p, refs))
        rows.extend(finalize(p, metrics, states, refs))
        memo.done(p)
    return rows


def _gather(ex: Executor, tasks: list[Task], bar) -> list[Result]:
    """Submit the costliest tasks first (the long ones start early), collect results back in task order."""
    order = sorted(range(len(tasks)), key=lambda i: -tasks[i].cost)
    futures = {ex.submit(run_task, tasks[i]): i for i in order}
    results: list[Result | None] = [None] * len(tasks)
    try:
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except BrokenProcessPool:
                raise OPDError("a worker process died (killed, or out of memory); its tensors were not analysed",
                               hint="use fewer workers (processes:N), or --executor ray, which re-runs the tasks "
                                    "of a dead worker") from None
            except Exception as e:
                raise _unwrap(e) from None
            results[futures[fut]] = res
            bar.update(tasks[futures[fut]].reads)
    finally:
        for fut in futures:
            fut.cancel()
    for res in results:
        for message, category in res.warnings:
            warnings.warn(f"{message} (on {res.node})", category, stacklevel=4)
    return results
