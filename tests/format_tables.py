"""End-to-end check shared by the format tests: `opd-dynamics analyze` gives the same table for one trajectory
written as HF safetensors and in a trainer's native format, and matches a float64 oracle."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from opd_dynamics.table import load

CLI = [sys.executable, "-m", "opd_dynamics_cli.app"]
W = "model.layers.1.mlp.down_proj.weight"


def assert_same_tables(hf_run: Path, base: Path, runs: list[Path], out: Path) -> None:
    """Analyse ``hf_run`` and ``runs`` together; every run's table equals the HF run's (rel 1e-6)."""
    r = subprocess.run([*CLI, "analyze", hf_run, *runs, "--base", base, "-o", out], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    df = load(out).set_index(["run", "step", "ref_step", "module", "layer", "kind", "metric"])["value"]
    ref = df.xs(hf_run.name, level="run").sort_index()
    assert len(ref) > 100
    for run in runs:
        got = df.xs(run.name, level="run").sort_index()
        assert got.index.equals(ref.index), f"{run.name}: different modules/metrics"
        np.testing.assert_allclose(got.to_numpy(), ref.to_numpy(), rtol=1e-6, atol=0, equal_nan=True,
                                   err_msg=run.name)
    # float64 oracle for one number: ‖W_2 − W_0‖_F from the safetensors files
    w0 = load_file(base / "model.safetensors")[W].double()
    w2 = load_file(hf_run / "checkpoint-2" / "model.safetensors")[W].double()
    oracle = float(torch.linalg.matrix_norm(w2 - w0))
    for run in (hf_run, *runs):
        got = df.loc[(run.name, 2, 0, W, 1, "mlp_down", "frobenius")]
        assert abs(got - oracle) <= 1e-6 * oracle, (run.name, got, oracle)
