"""The README's main job, end to end on the tiny preset: analyse, print, report; a second call reuses the runs.

The runs themselves are the session's ``tiny_runs`` (tests/lab/test_reference.py checks how they are trained):
the demo finds them under ``out/lab`` and reuses them, as it does on a user's second call.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from opd_dynamics.demo import PORTABLE_ENV
from opd_dynamics.table import load, load_manifest

pytestmark = pytest.mark.slow


def test_demo_command_end_to_end(tmp_path, tiny_runs):
    out = tmp_path / "demo"
    shutil.copytree(tiny_runs.out_dir, out / "lab")
    stamp = (out / "lab" / "teacher" / "model.safetensors").stat().st_mtime_ns
    cmd = [sys.executable, "-m", "opd_dynamics_cli.app", "demo", str(out), "--preset", "tiny", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (out / "lab" / "teacher" / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not retrained
    assert "EffOPD Table 1" in r.stdout and "teacher" in r.stdout
    assert "CPU kernels: portable (ATEN_CPU_CAPABILITY=default, MKL_CBWR=COMPATIBLE)" in r.stdout
    assert f"teacher {tiny_runs.accuracy['teacher']:.3f}" in r.stdout
    assert "Writing model shards" not in r.stderr
    df = load(out / "results")
    assert set(df.run) == {"opd", "rl", "sft"}
    assert {"spectral_ratio", "effective_rank", "sparsity_bf16", "principal_angle_left_max"} <= set(df.metric)
    assert load_manifest(out / "results")["runs"][0]["base"].endswith("base")
    assert (out / "report" / "index.html").stat().st_size > 10_000
    t0 = time.perf_counter()
    again = subprocess.run(cmd + ["--no-report", "--native-kernels"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and time.perf_counter() - t0 < 120
    assert "CPU kernels: native" in again.stdout
    table = lambda text: text.split("\n", 1)[1].split("\nresults: ")[0]  # noqa: E731  (no header, paths, times)
    assert table(again.stdout) == table(r.stdout) and "EffOPD Table 1" in table(r.stdout)  # same runs, same table


FINGERPRINT = """
import hashlib, sys
from pathlib import Path
from safetensors.torch import load_file
from opd_dynamics.lab import build_reference_runs
out = Path(sys.argv[1])
build_reference_runs(out, preset="tiny", seed=0, progress=False)
h = hashlib.sha256()
for f in sorted(out.rglob("*.safetensors")):
    d = load_file(f)
    h.update(b"".join(d[k].numpy().tobytes() for k in sorted(d)))
print(h.hexdigest())
"""


def _fingerprint(tmp_path, name: str, env: dict[str, str]) -> str:
    """sha256 of every tensor of the tiny reference runs, trained in a fresh process with ``env``."""
    r = subprocess.run([sys.executable, "-c", FINGERPRINT, str(tmp_path / name)], env={**os.environ, **env},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[-1]  # the last line: imported packages may log to stdout first


def test_portable_kernels_do_not_depend_on_what_the_cpu_offers(tmp_path):
    """docs/reference-runs.md#reproducibility: under PORTABLE_ENV, what another CPU would change — oneDNN's
    instruction set, glibc's FMA/AVX2 maths variants, the thread count — changes no bit of the trained runs, while
    ATen's own instruction-set choice does change them (so the fingerprint can see a kernel difference)."""
    portable = _fingerprint(tmp_path, "portable", PORTABLE_ENV)
    other_cpu = {**PORTABLE_ENV, "ONEDNN_MAX_CPU_ISA": "SSE41", "GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA,-AVX512F",
                 "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert _fingerprint(tmp_path, "other_cpu", other_cpu) == portable
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":  # a CPU with SIMD kernels: the native path differs
        native = {k: v for k, v in os.environ.items() if k not in PORTABLE_ENV}
        r = subprocess.run([sys.executable, "-c", FINGERPRINT, str(tmp_path / "native")], env=native,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and r.stdout.split()[-1] != portable, r.stderr


def test_effopd_replay_command_on_the_tiny_reference_run(tmp_path, tiny_runs):
    out = tmp_path / "effopd"
    cmd = [sys.executable, "-m", "opd_dynamics_cli.app", "effopd", "replay", str(tiny_runs.runs["opd"]), "-q",
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
