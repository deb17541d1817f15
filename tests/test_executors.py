"""Executors: worker processes give the local table row for row; specs, thread budgets and errors are clear."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch

from opd_dynamics import analyze, open_run
from opd_dynamics.engine import run_metrics
from opd_dynamics.errors import CheckpointError, OPDError
from opd_dynamics.executors import ExecutorSpec, blas_threads, cpu_budget, default_threads, open_executor
from opd_dynamics.engine import Job
from opd_dynamics.io.discovery import Run
from opd_dynamics.metrics.registry import Spec

METRICS = ["frobenius", "spectral_norm", "effective_rank", "stable_rank", "alignment_to_final:k=4",
           "subspace_locking", "rank1_pca_evr"]


#: bit-for-bit table comparisons need equal thread counts everywhere (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def inputs(synthetic_runs, sharded_opd, tiny_gpt2_runs):
    """Four runs (two synthetic, the sharded copy, a GPT-2 with fused qkv) and their bases."""
    paths = [synthetic_runs["opd"], synthetic_runs["rl"], sharded_opd, tiny_gpt2_runs["run"]]
    return paths, [synthetic_runs["base"]] * 3 + [tiny_gpt2_runs["base"]]


@pytest.mark.slow  # a pool of worker processes (the fast tier: a pickling Executor below, the same tasks and rows)
def test_processes_give_the_local_table_row_for_row(inputs):
    paths, bases = inputs
    kw = dict(base=bases, metrics=METRICS, progress=False)
    local = analyze(paths, **kw)
    procs = analyze(paths, executor="processes:2", **kw)
    assert len(local) > 500 and set(local.run) == {"opd", "rl", "opd_sharded", "run"}
    pd.testing.assert_frame_equal(local, procs, check_exact=True)


@pytest.mark.parametrize("against", ["base", "prev", 2])
def test_any_concurrent_futures_executor_gives_the_local_table(inputs, against):
    """The one interface: a caller's own Executor (here threads; Dask's get_executor() alike) runs the same tasks
    (pickled and unpickled first, as a process boundary would)."""
    paths, bases = inputs
    kw = dict(base=bases, metrics=METRICS, against=against, progress=False)
    local = analyze(paths, **kw)

    class Pickling(ThreadPoolExecutor):
        def submit(self, fn, /, *args):
            return super().submit(fn, *pickle.loads(pickle.dumps(args)))

    with Pickling(2) as ex:
        pd.testing.assert_frame_equal(local, analyze(paths, executor=ex, **kw), check_exact=True)


def test_worker_errors_arrive_as_the_same_one_line_error(synthetic_runs, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(synthetic_runs["opd"], bad)
    f = bad / "checkpoint-4" / "model.safetensors"
    sd = load_file(f)
    name = "model.layers.0.mlp.up_proj.weight"
    sd[name][0, 0] = float("nan")
    save_file(sd, f, metadata={"format": "pt"})
    with pytest.raises(CheckpointError) as local:
        analyze([bad], base=synthetic_runs["base"], metrics=["frobenius"], progress=False)
    with pytest.raises(CheckpointError) as pool, ThreadPoolExecutor(2) as ex:
        analyze([bad], base=synthetic_runs["base"], metrics=["frobenius"], progress=False, executor=ex)
    assert str(pool.value) == str(local.value)
    crossed = pickle.loads(pickle.dumps(local.value))  # as a worker process hands it back
    assert type(crossed) is CheckpointError and (crossed.message, crossed.hint) == (local.value.message, local.value.hint)
    with pytest.warns(UserWarning, match="NaN/Inf"), ThreadPoolExecutor(1) as ex:  # the worker's warning arrives
        df = analyze([bad], base=synthetic_runs["base"], metrics=["frobenius"], progress=False, nonfinite="nan",
                     executor=ex)
    assert df.value.isna().sum() == 1


def test_a_hand_built_run_is_refused_off_process(synthetic_runs):
    run = open_run(synthetic_runs["opd"], base=synthetic_runs["base"])
    bare = Run(run.name, run.root, run.base, run.steps)  # no source: workers could not re-open it
    with pytest.raises(OPDError, match="built by hand"):
        run_metrics([bare], [Spec("frobenius")], progress=False, executor="processes:2")
    assert run_metrics([bare], [Spec("frobenius")], progress=False)  # local still works


@pytest.mark.parametrize("text,expected", [
    ("local", ExecutorSpec("local")),
    ("processes", ExecutorSpec("processes")),
    ("processes:3", ExecutorSpec("processes", workers=3)),
    ("ray", ExecutorSpec("ray")),
    ("ray:auto", ExecutorSpec("ray", address="auto")),
    ("ray:ray://head:10001,num_gpus=0.25,num_cpus=2", ExecutorSpec("ray", address="ray://head:10001", num_cpus=2,
                                                                    num_gpus=0.25)),
    ("ray:10.0.0.1:6379,retries=5", ExecutorSpec("ray", address="10.0.0.1:6379", retries=5)),
])
def test_executor_specs_parse(text, expected):
    assert ExecutorSpec.parse(text) == expected


@pytest.mark.parametrize("text,match", [("dask", "unknown executor"), ("processes:x", "not a worker count"),
                                        ("processes:0", "not a worker count"), ("local:2", "no target"),
                                        ("ray,gpus=1", "not understood"), ("ray,num_gpus=half", "not a number"),
                                        ("processes:2,num_cpus=1", "not understood")])
def test_bad_executor_specs_are_one_line_errors(text, match):
    with pytest.raises(OPDError, match=match):
        ExecutorSpec.parse(text)


def test_ray_absent_is_a_clear_error(monkeypatch, synthetic_runs):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as where it is not installed
    with pytest.raises(OPDError, match=r"opd-dynamics\[ray\]"):
        analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], metrics=["frobenius"], progress=False,
                executor="ray")


@pytest.mark.slow  # a fresh interpreter (the fast tier: test_layering.py's test_an_analysis_loads_only_what_it_uses)
def test_local_runs_never_import_ray(synthetic_runs):
    code = ("import sys; from opd_dynamics import analyze; "
            f"analyze([{str(synthetic_runs['opd'])!r}], base={str(synthetic_runs['base'])!r}, metrics=['frobenius'],"
            " progress=False); print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_workers_times_threads_fit_the_affinity_mask(monkeypatch):
    monkeypatch.delenv("OPD_DYNAMICS_THREADS")  # the choice itself is under test here
    cpus = cpu_budget()
    assert cpus == len(os.sched_getaffinity(0))
    for workers in (1, 2, 3, 8):
        assert default_threads(workers) * min(workers, cpus) <= max(cpus, workers)
        assert default_threads(workers) >= 1


@pytest.mark.slow  # starts a pool of worker processes
def test_worker_processes_use_their_share_of_the_affinity_mask(monkeypatch):
    monkeypatch.delenv("OPD_DYNAMICS_THREADS")  # the choice itself is under test here
    cpus = cpu_budget()
    job = Job((Spec("frobenius"),))
    with open_executor(ExecutorSpec("processes", workers=2), job, []) as (ex, workers, _):
        got = [f.result() for f in [ex.submit(torch.get_num_threads) for _ in range(4)]]
        blas = [f.result() for f in [ex.submit(blas_threads) for _ in range(4)]]
    assert workers <= cpus and max(got) * workers <= cpus
    assert all(b is None or b * workers <= cpus for b in blas)  # numpy's OpenBLAS pool too


@pytest.mark.slow  # a fresh interpreter importing torch under taskset
def test_default_torch_threads_follow_the_affinity_mask():
    """Pinned to one CPU, torch (and so the local executor) uses one thread, whatever the machine has."""
    code = "import torch; print(torch.get_num_threads())"
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    out = subprocess.run(["taskset", "-c", str(min(os.sched_getaffinity(0))), sys.executable, "-c", code],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        pytest.skip(f"taskset unavailable: {out.stderr.strip()[:80]}")
    assert out.stdout.strip() == "1"


@pytest.mark.slow
def test_cli_executor_option(synthetic_runs, tmp_path):
    from opd_dynamics.table import load

    cli = [sys.executable, "-m", "opd_dynamics_cli.app", "analyze", str(synthetic_runs["opd"]), "--base",
           str(synthetic_runs["base"]), "-q", "--metrics", "spectral_norm,alignment_to_final:k=4"]
    r = subprocess.run([*cli, "--executor", "processes:2", "-o", str(tmp_path / "p")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    local = analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], progress=False,
                    metrics=["spectral_norm", "alignment_to_final:k=4"])
    pd.testing.assert_frame_equal(local, load(tmp_path / "p"), check_exact=True)
    bad = subprocess.run([*cli, "--executor", "dask"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown executor 'dask'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("against", ["base", "prev"])
def test_incremental_runs_on_an_executor_match_a_fresh_local_run(synthetic_runs, tmp_path, against):
    """Cache × executor: tasks compute only the missing cells and hand back their states; the table is a fresh one."""
    import shutil

    run, out = tmp_path / "opd", tmp_path / "res"
    for s in (1, 2, 4):
        shutil.copytree(synthetic_runs["opd"] / f"checkpoint-{s}", run / f"checkpoint-{s}")
    kw = dict(base=synthetic_runs["base"], metrics=METRICS, against=against, progress=False)

    class Pickling(ThreadPoolExecutor):
        def submit(self, fn, /, *args):
            res = super().submit(fn, *pickle.loads(pickle.dumps(args)))
            return res

    with Pickling(2) as ex:
        analyze([run], out=out, executor=ex, **kw)
        shutil.copytree(synthetic_runs["opd"] / "checkpoint-8", run / "checkpoint-8")
        again = analyze([run], out=out, executor=ex, **kw)
    import json

    cells = json.loads((out / "manifest.json").read_text())["settings"]["cells"]
    assert cells["reused"] > 0 and cells["computed"] > 0  # only step 8's cells were computed by the tasks
    fresh = analyze([run], **kw)
    pd.testing.assert_frame_equal(fresh, again, check_exact=True)
    local = analyze([run], out=tmp_path / "local", **kw)  # and the cache it wrote serves a local re-run
    pd.testing.assert_frame_equal(fresh, analyze([run], out=out, **kw), check_exact=True)
    pd.testing.assert_frame_equal(fresh, local, check_exact=True)


def test_local_runs_use_one_thread_count_for_torch_and_openblas_and_give_it_back(synthetic_runs, monkeypatch):
    """The numpy OpenBLAS pool (the float64 Gram backend on some CPUs) ignores torch.set_num_threads; oversubscribed,
    the two pools made a loaded 2-core run 28× slower. During a local run both follow one choice; after it the
    caller's settings are back."""
    import opd_dynamics.executors as executors

    seen = []
    real = executors.stream

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), blas_threads()))
        return real(*args, **kwargs)

    monkeypatch.setattr(executors, "stream", spy)
    before = (torch.get_num_threads(), blas_threads())
    monkeypatch.setenv("OPD_DYNAMICS_THREADS", "1")
    analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], metrics=["frobenius"], progress=False)
    assert seen[-1][0] == 1 and seen[-1][1] in (None, 1)
    monkeypatch.delenv("OPD_DYNAMICS_THREADS")
    analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], metrics=["frobenius"], progress=False)
    t, b = seen[-1]
    assert 1 <= t <= min(cpu_budget(), before[0]) and b in (None, t)
    assert (torch.get_num_threads(), blas_threads()) == before


@pytest.mark.parametrize("against", ["base", "prev"])
def test_local_spreads_tensors_over_threads_and_gives_the_one_thread_table(inputs, against, monkeypatch):
    """``local`` with two compute threads runs two tensors at a time, each on one torch/OpenBLAS thread: every row is
    bit for bit the one-thread run's, in the same order (a Llama run and a GPT-2 run with fused qkv)."""
    import threading

    import opd_dynamics.executors as executors

    paths, bases = [inputs[0][0], inputs[0][3]], [inputs[1][0], inputs[1][3]]
    kw = dict(base=bases, metrics=METRICS, against=against, progress=False)
    serial = analyze(paths, **kw)  # OPD_DYNAMICS_THREADS=1 (the module's fixture): one stream, one thread
    seen, real = [], executors.stream

    def spy(plans, *a, **k):
        seen.append((threading.current_thread().name, torch.get_num_threads(), blas_threads(), len(plans)))
        return real(plans, *a, **k)

    monkeypatch.setattr(executors, "stream", spy)
    monkeypatch.setattr(executors, "default_threads", lambda workers=1: 2)
    spread = analyze(paths, **kw)
    pd.testing.assert_frame_equal(serial, spread, check_exact=True)
    assert len(seen) > 20 and all(name.startswith("opd-local") and t == 1 and b in (None, 1) and n == 1
                                  for name, t, b, n in seen)
    assert len({name for name, *_ in seen}) == 2  # both threads took tensors


def test_local_threads_run_big_tensors_alone_on_every_thread(synthetic_runs, monkeypatch):
    """Tensors over PREFETCH_MAX_BYTES (an embedding) go one at a time on all threads, before the rest."""
    import threading

    import opd_dynamics.executors as executors

    monkeypatch.setattr(executors, "PREFETCH_MAX_BYTES", 64 * 32 * 4 - 1)  # embedding, lm_head and MLP: 64×32 float32
    seen, real = [], executors.stream

    def spy(plans, *a, **k):
        seen.append((plans[0].tensor, threading.current_thread().name, torch.get_num_threads()))
        return real(plans, *a, **k)

    monkeypatch.setattr(executors, "stream", spy)
    kw = dict(base=synthetic_runs["base"], metrics=["frobenius", "spectral_norm"], progress=False)
    serial = analyze([synthetic_runs["opd"]], **kw)
    monkeypatch.setattr(executors, "default_threads", lambda workers=1: 2)
    seen.clear()
    spread = analyze([synthetic_runs["opd"]], **kw)
    pd.testing.assert_frame_equal(serial, spread, check_exact=True)
    big = [i for i, (name, thread, t) in enumerate(seen) if thread == threading.main_thread().name]
    assert big and big == list(range(len(big)))  # first, in this thread
    assert all(seen[i][2] == 2 for i in big)
    assert all(t == 1 for _, thread, t in seen[len(big):])


def test_local_threads_raise_the_error_a_one_thread_run_meets_first(synthetic_runs, tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import load_file, save_file

    import opd_dynamics.executors as executors

    bad = tmp_path / "bad"
    shutil.copytree(synthetic_runs["opd"], bad)
    f = bad / "checkpoint-4" / "model.safetensors"
    sd = load_file(f)
    for name in ("model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        sd[name][0, 0] = float("nan")
    save_file(sd, f, metadata={"format": "pt"})
    kw = dict(base=synthetic_runs["base"], metrics=["frobenius"], progress=False)
    with pytest.raises(CheckpointError) as serial:
        analyze([bad], **kw)
    monkeypatch.setattr(executors, "default_threads", lambda workers=1: 2)
    for _ in range(3):
        with pytest.raises(CheckpointError) as spread:
            analyze([bad], **kw)
        assert str(spread.value) == str(serial.value) and "layers.0.mlp.up_proj" in str(serial.value)
    # a big tensor (run first, alone) fails too, later in plan order than a small one: the small one's error wins
    sd = load_file(synthetic_runs["opd"] / "checkpoint-4" / "model.safetensors")  # clean again
    sd["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    sd["model.layers.0.self_attn.q_proj.weight"][0, 0] = float("nan")
    save_file(sd, f, metadata={"format": "pt"})
    monkeypatch.setattr(executors, "PREFETCH_MAX_BYTES", 64 * 32 * 4 - 1)  # the MLP matrices count as big
    monkeypatch.setattr(executors, "default_threads", lambda workers=1: 1)
    with pytest.raises(CheckpointError) as serial:
        analyze([bad], **kw)
    monkeypatch.setattr(executors, "default_threads", lambda workers=1: 2)
    with pytest.raises(CheckpointError) as spread:
        analyze([bad], **kw)
    assert str(spread.value) == str(serial.value) and "layers.0.self_attn.q_proj" in str(serial.value)


def test_local_threads_take_fewer_tensors_at_a_time_when_memory_is_short(synthetic_runs, monkeypatch):
    """k tensors at a time only while k working sets fit in LOCAL_MEMORY (or the largest tensor's own): with room
    for one, the tensors run one at a time on all threads, in a single pool thread."""
    import threading

    import opd_dynamics.executors as executors

    seen, real = [], executors.stream

    def spy(plans, *a, **k):
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(plans, *a, **k)

    monkeypatch.setattr(executors, "stream", spy)
    monkeypatch.setattr(executors, "default_threads", lambda workers=1: 2)
    monkeypatch.setattr(executors, "LOCAL_MEMORY", 1)
    kw = dict(base=synthetic_runs["base"], metrics=["frobenius"], progress=False)
    analyze([synthetic_runs["opd"]], **kw)
    assert len({name for name, _ in seen}) == 1 and {t for _, t in seen} == {2}
    p = executors.TensorPlan(open_run(synthetic_runs["opd"], base=synthetic_runs["base"]),
                             "model.layers.0.mlp.up_proj.weight", (), 2)
    e = 64 * 32  # float32 64×32: 3 stored copies + ΔW + one float64 block of it + the 32×32 float64 Gram
    assert executors._footprint(p) == 3 * 4 * e + 4 * e + 8 * e + 8 * 32 * 32
