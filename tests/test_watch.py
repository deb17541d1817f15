"""Watch mode: follow a run while another process writes it; half-written checkpoints are waited for, not errors.

The two tests with a real writer process and a real Ctrl-C are ``slow`` (seconds of real waiting, two interpreters);
the fast tier covers the same path in-process: ``follow`` with a planted trainer, and ``analyze --watch`` through the
CLI's ``main()`` on a finished run."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from cli_runner import run_cli

from opd_dynamics.synthetic import make_synthetic_runs
from opd_dynamics.live import Stability, follow, incomplete

WRITER = textwrap.dedent('''
    import json, shutil, sys, time
    from pathlib import Path
    src, dst, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])

    def analysed(step, timeout=60):  # go on once the watcher has written the table with this step
        end = time.time() + timeout
        while time.time() < end:
            try:
                if str(step) in json.loads((out / "manifest.json").read_text())["runs"][0]["steps"]:
                    return
            except (OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.1)

    def write(step, keep=None, pause=0.0):
        d = dst / f"checkpoint-{step}"
        d.mkdir(parents=True)
        shutil.copy(src / f"checkpoint-{step}" / "config.json", d)
        data = (src / f"checkpoint-{step}" / "model.safetensors").read_bytes()
        with open(d / "model.safetensors", "wb") as fh:   # written in two halves, like a slow disk
            fh.write(data[: len(data) // 2]); fh.flush()
            time.sleep(pause)
            if keep is None:
                fh.write(data[len(data) // 2:])

    write(1, pause=0.5); analysed(1)
    write(2, pause=0.5); analysed(2)
    write(8, keep=False)            # a half-written checkpoint that never completes
    (dst / "tmp-checkpoint-3").mkdir()  # HF Trainer's staging name: never a checkpoint
    write(3, pause=1.0)
    write(4, pause=0.5)
''')


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_synthetic_runs(tmp_path_factory.mktemp("src"), steps=(1, 2, 3, 4, 8), kinds=("opd",), layers=1,
                               hidden=16)


@pytest.mark.slow  # a writer process and the CLI's own, with real pauses between checkpoints
def test_cli_watch_follows_a_run_written_by_another_process(source, tmp_path):
    run, out = tmp_path / "live", tmp_path / "res"
    run.mkdir()
    (tmp_path / "writer.py").write_text(WRITER)
    writer = subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(source["opd"]), str(run), str(out)])
    try:
        r = subprocess.run([sys.executable, "-m", "opd_dynamics_cli.app", "analyze", str(run), "--base",
                            str(source["base"]), "-o", str(out), "-m", "frobenius,alignment_to_final", "--watch",
                            "--until-step", "4", "--interval", "0.2", "--report", str(tmp_path / "report")],
                           capture_output=True, text=True, timeout=180)
    finally:
        writer.wait(timeout=60)
    assert r.returncode == 0, r.stderr
    assert "error" not in r.stderr and "Traceback" not in r.stderr
    df = pd.read_parquet(out / "metrics.parquet")
    assert set(df.step) == {1, 2, 3, 4}  # 8 never completed
    assert r.stderr.count("analysed steps up to") >= 3  # the table was written while the run went on
    assert (tmp_path / "report" / "index.html").exists()
    fresh = __import__("opd_dynamics").analyze([run], base=source["base"], metrics=["frobenius", "alignment_to_final"],
                                               steps=[1, 2, 3, 4], progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet").astype(fresh.dtypes.to_dict()), fresh)


def test_a_checkpoint_is_ready_only_when_complete_and_unchanged(source, tmp_path):
    d = tmp_path / "checkpoint-1"
    d.mkdir()
    data = (source["opd"] / "checkpoint-1" / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[:100])
    stable = Stability()
    assert incomplete(d) and not stable.ready(d)
    (d / "model.safetensors").write_bytes(data)
    assert incomplete(d) is None
    assert not stable.ready(d)  # just changed: wait one more look
    assert stable.ready(d)


def test_follow_stops_on_ctrl_c_and_at_until_step(source, tmp_path):
    calls = []

    def interrupt(_):
        raise KeyboardInterrupt

    assert follow(source["opd"], calls.append, interval=0, sleep=interrupt, echo=lambda m: None) == []
    done = follow(source["opd"], calls.append, interval=0, until_step=3, sleep=lambda s: None, echo=lambda m: None)
    assert done == [1, 2, 3, 4, 8] and calls[-1] == done


class _Handle:
    """Stands in for IPython's display handle: records each redraw."""

    def __init__(self):
        self.figures = []

    def update(self, fig):
        self.figures.append([ax.get_ylabel() for ax in fig.axes if ax.get_visible()])


def test_od_watch_redraws_in_place_as_checkpoints_arrive(source, tmp_path):
    import shutil

    import opd_dynamics as od

    run = tmp_path / "live"
    run.mkdir()
    pending = [1, 2, 3]

    def tick(_):  # the "trainer": one more checkpoint between looks
        if pending:
            s = pending.pop(0)
            shutil.copytree(source["opd"] / f"checkpoint-{s}", run / f"checkpoint-{s}")

    shutil.copytree(source["opd"] / "checkpoint-1", run / "checkpoint-1")
    pending.pop(0)
    handle = _Handle()
    df = od.watch(run, base=source["base"], metrics=["spectral_ratio", "effective_rank"], interval=0,
                  until_step=3, handle=handle, sleep=tick, out=tmp_path / "res")
    assert set(df.step) == {1, 2, 3} and len(handle.figures) == 3
    assert len(handle.figures[-1]) == 2
    again = _Handle()  # a results directory written by another process: drawn from its table
    od.watch(tmp_path / "res", metrics=["spectral_ratio"], until_step=3, handle=again, sleep=lambda s: None)
    assert len(again.figures) == 1


def test_follow_analyses_a_checkpoint_rewritten_in_place_again(source, tmp_path):
    import os
    import shutil

    run = tmp_path / "live"
    shutil.copytree(source["opd"] / "checkpoint-1", run / "checkpoint-1")
    calls, looks = [], []

    def tick(_):
        looks.append(1)
        if len(looks) == 3:  # the trainer rewrites checkpoint-1 (same size, new mtime)
            f = run / "checkpoint-1" / "model.safetensors"
            st = f.stat()
            os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        if len(looks) > 6:
            raise KeyboardInterrupt

    follow(run, calls.append, interval=0, sleep=tick, echo=lambda m: None)
    assert calls == [[1], [1]]


def test_cli_watch_stops_once_until_step_is_analysed(source, tmp_path):
    """``analyze --watch`` through the CLI on a run already written: one look to see the files, one to see them
    unchanged, then every ready step analysed in one table and exit status 0."""
    out = tmp_path / "res"
    r = run_cli("analyze", source["opd"], "--base", source["base"], "-o", out, "-m", "frobenius", "--watch",
                "--until-step", "4", "--interval", "0.05")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("analysed steps up to 8 (5 checkpoints)") == 1 and "Traceback" not in r.stderr
    fresh = __import__("opd_dynamics").analyze([source["opd"]], base=source["base"], metrics=["frobenius"],
                                               progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "metrics.parquet").astype(fresh.dtypes.to_dict()), fresh)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # no temp directory or lock left beside -o


@pytest.mark.slow  # a real SIGINT to a real process (the in-process path: test_follow_stops_on_ctrl_c_and_at_until_step)
def test_cli_watch_exits_cleanly_on_ctrl_c(source, tmp_path):
    import signal
    import time

    out = tmp_path / "res"
    p = subprocess.Popen([sys.executable, "-m", "opd_dynamics_cli.app", "analyze", str(source["opd"]), "--base",
                          str(source["base"]), "-o", str(out), "-m", "frobenius", "--watch", "--interval", "0.2"],
                         stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even under `pytest &`
    end = time.time() + 120
    while not (out / "manifest.json").exists() and time.time() < end and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "stopped watching" in err and "Traceback" not in err
    assert set(pd.read_parquet(out / "metrics.parquet").step) == {1, 2, 3, 4, 8}
