"""The README's main job, end to end on the tiny preset: train, analyse, print, report; a second call reuses the runs."""
from __future__ import annotations

import subprocess
import sys
import time

from opd_dynamics.table import load, load_manifest


def test_demo_command_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "opd_dynamics_cli.app", "demo", str(out), "--preset", "tiny", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "EffOPD Table 1" in r.stdout and "teacher" in r.stdout
    assert "Writing model shards" not in r.stderr
    df = load(out / "results")
    assert set(df.run) == {"opd", "rl", "sft"}
    assert {"spectral_ratio", "effective_rank", "sparsity_bf16", "principal_angle_left_max"} <= set(df.metric)
    assert load_manifest(out / "results")["runs"][0]["base"].endswith("base")
    assert (out / "report" / "index.html").stat().st_size > 10_000
    t0 = time.perf_counter()
    again = subprocess.run(cmd + ["--no-report"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and time.perf_counter() - t0 < 120


def test_effopd_replay_command_on_the_tiny_reference_run(tmp_path):
    from opd_dynamics.lab import build_reference_runs
    import pandas as pd

    refs = build_reference_runs(tmp_path / "lab", preset="tiny", progress=False)
    out = tmp_path / "effopd"
    cmd = [sys.executable, "-m", "opd_dynamics_cli.app", "effopd", "replay", str(refs.runs["opd"]), "-q",
           "-e", "loglik:split=train,limit=8", "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "cannot see how training would have continued" in r.stdout
    summary = pd.read_csv(out / "summary.csv")
    assert summary.step.tolist() == [1, 2, 4] and summary.accepted_k.between(0, 5).all()
    frame = pd.read_parquet(out / "studies.parquet")
    assert set(frame.variant) >= {"opd", "effopd"} and set(frame.study) == {"effopd"}
    bad = subprocess.run(cmd[:5] + [str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
