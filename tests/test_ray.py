"""Ray: a two-node cluster on this machine gives the local table; a killed worker's task is re-run; a node that
cannot see a checkpoint is named in a one-line error.

The cluster is started once per session: a head (``ray start --head --num-cpus=1``) and a second node
(``ray start --address=... --num-cpus=1``), both on 127.0.0.1, as process groups this fixture owns and stops.
The second node runs in its own mount namespace (``unshare -m``) with an empty tmpfs over one directory, so a
path the driver sees is really absent for that node's workers — a filesystem one node lacks, honestly, on one
machine (the test that needs it is skipped, saying why, where mount namespaces are not allowed).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

ray = pytest.importorskip("ray")

from opd_dynamics import analyze  # noqa: E402
from opd_dynamics.errors import OPDError  # noqa: E402
from opd_dynamics.synthetic import make_synthetic_runs  # noqa: E402

#: bit-for-bit table comparisons need equal thread counts everywhere (conftest.one_thread)
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
METRICS = ["frobenius", "spectral_norm", "effective_rank", "alignment_to_final:k=4", "subspace_locking"]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "--propagation", "private", "true"], capture_output=True,
                              timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _stop(procs) -> None:
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 5
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # the group: raylet, GCS and workers this node started
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """{'address', 'hidden', 'blind'}: a 2-node Ray cluster; ``hidden`` is a directory the second node cannot see."""
    hidden = tmp_path_factory.mktemp("driver_only")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the driver side of a local, token-less test cluster
    common = ["--block", "--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=80000000",
              "--disable-usage-stats"]
    log = tmp_path_factory.mktemp("ray_logs")
    procs = [subprocess.Popen(["ray", "start", "--head", f"--port={port}", "--include-dashboard=false", *common],
                              env=env, start_new_session=True, stdout=open(log / "head.log", "w"),
                              stderr=subprocess.STDOUT)]
    blind = _can_unshare()
    node2 = ["ray", "start", f"--address={address}", *common]
    if blind:  # an empty tmpfs over `hidden`, seen only by this node and the workers it starts
        node2 = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                 f"mount -t tmpfs tmpfs {hidden} && exec " + " ".join(node2)]
    try:
        deadline = time.time() + 120
        while True:
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                break
            except Exception:
                if time.time() > deadline or procs[0].poll() is not None:
                    raise RuntimeError(f"Ray head did not start: {(log / 'head.log').read_text()[-2000:]}")
                time.sleep(1)
        head_id = ray.get_runtime_context().get_node_id()
        procs.append(subprocess.Popen(node2, env=env, start_new_session=True, stdout=open(log / "node2.log", "w"),
                                      stderr=subprocess.STDOUT))
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            if time.time() > deadline or procs[1].poll() is not None:
                raise RuntimeError(f"second Ray node did not join: {(log / 'node2.log').read_text()[-2000:]}")
            time.sleep(1)
        other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head_id)
        yield {"address": address, "hidden": hidden, "blind": other if blind else None}
    finally:
        ray.shutdown()
        _stop(procs)


@pytest.fixture(scope="module")
def inputs(synthetic_runs, sharded_opd, tiny_gpt2_runs):
    return ([synthetic_runs["opd"], synthetic_runs["rl"], sharded_opd, tiny_gpt2_runs["run"]],
            [synthetic_runs["base"]] * 3 + [tiny_gpt2_runs["base"]])


def _connected(cluster):
    if not ray.is_initialized():
        ray.init(address=cluster["address"], logging_level="ERROR", log_to_driver=False)


def test_two_node_ray_cluster_gives_the_local_table(cluster, inputs):
    _connected(cluster)
    paths, bases = inputs
    kw = dict(base=bases, metrics=METRICS, progress=False)
    local = analyze(paths, **kw)
    remote = analyze(paths, executor=f"ray:{cluster['address']}", **kw)
    pd.testing.assert_frame_equal(local, remote, check_exact=True)
    prev = dict(kw, against="prev")
    pd.testing.assert_frame_equal(analyze(paths, **prev), analyze(paths, executor="ray:auto", **prev), check_exact=True)


def _task_workers() -> list[int]:
    """pids of Ray workers running one of our tasks now (Ray titles them ``ray::run_task``)."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::run_task"):
                out.append(int(pid))
    return out


def test_a_killed_worker_is_retried_and_the_table_is_complete(cluster, tmp_path):
    _connected(cluster)
    runs = make_synthetic_runs(tmp_path, steps=(1, 2, 4, 8, 16, 32), kinds=("opd",), layers=2, hidden=192)
    kw = dict(base=runs["base"], metrics=METRICS + ["rank1_pca_evr"], spectrum_method="svd64", progress=False)
    local = analyze([runs["opd"]], **kw)
    killed: list[int] = []
    stop = threading.Event()

    def killer():
        while not stop.is_set() and not killed:
            for pid in _task_workers():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.005)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    try:
        remote = analyze([runs["opd"]], executor="ray,retries=3", **kw)
    finally:
        stop.set()
        t.join()
    assert killed, "no task was caught running: nothing was killed"
    pd.testing.assert_frame_equal(local, remote, check_exact=True)


def test_a_path_one_node_cannot_see_is_a_one_line_error_naming_it(cluster, synthetic_runs):
    if cluster["blind"] is None:
        pytest.skip("mount namespaces (unshare -m) are not allowed here, so no node can be made blind honestly")
    run = cluster["hidden"] / "opd"
    if not run.exists():
        shutil.copytree(synthetic_runs["opd"], run)
    _connected(cluster)
    with pytest.raises(OPDError) as err:
        analyze([run], base=synthetic_runs["base"], metrics=["frobenius"], progress=False, executor="ray:auto")
    msg = str(err.value)
    assert f"ray node {cluster['blind'][:12]}" in msg and "'opd'" in msg and str(run) in msg
    assert "\n" not in msg and "mounts at the same path" in msg
    ray.shutdown()  # the CLI below is its own driver: it connects by address and prints one line
    r = subprocess.run([sys.executable, "-m", "opd_dynamics_cli.app", "analyze", str(run), "--base",
                        str(synthetic_runs["base"]), "-q", "--metrics", "frobenius",
                        "--executor", f"ray:{cluster['address']}"], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, RAY_AUTH_MODE="disabled"))
    assert r.returncode != 0 and f"ray node {cluster['blind'][:12]}" in r.stderr and "Traceback" not in r.stderr


def test_plain_ray_starts_its_own_local_cluster_for_the_call(cluster, synthetic_runs):
    """``--executor ray`` with no address starts a new local cluster (even with another one up on this machine)
    and stops it afterwards."""
    if ray.is_initialized():
        ray.shutdown()
    kw = dict(base=synthetic_runs["base"], metrics=["frobenius", "alignment_to_final:k=4"], progress=False)
    local = analyze([synthetic_runs["opd"]], **kw)
    pd.testing.assert_frame_equal(local, analyze([synthetic_runs["opd"]], executor="ray,workers=1", **kw),
                                  check_exact=True)
    assert not ray.is_initialized()
