"""Every metric on CUDA against the CPU float64 oracle (stated tolerances); GPU executors give the local table.

Skipped without a CUDA device; `bench/gpu_check.sh` runs it on a GPU machine. The oracle is the CPU path with
``spectrum_method="svd64"`` (float64 SVD of ΔW). Tolerances, per output, and why:

- norms (``frobenius``, ``relative_update``): rel 1e-6 — float64 reductions of the same float32 ΔW;
- spectra (σ-based: ``spectral_norm``, ``spectral_ratio``, ``stable_rank``, ``top1pct_ratio``, ``effective_rank``,
  ``hill_alpha``, ``spectral_shift``): rel 1e-5 — float64 Gram + eigvalsh on the GPU against float64 SVD; the Gram
  squares the condition number, so the smallest σ carry ~1e-8 relative error, well inside this;
- integer-valued outputs (``numerical_rank``, ``min_dim``, ``sparsity_bf16_numel``/``bits``): exact;
- direction (``alignment_to_final``, ``subspace_locking``, ``rank1_pca_evr*``) and principal-angle / overlap outputs:
  abs 1e-4 — singular vectors of nearly equal σ rotate within their cluster, and overlaps count thresholded
  entries, so these agree to what the metrics can resolve, not to the last bit.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from opd_dynamics import analyze
from opd_dynamics.metrics.registry import available

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.sh)")

NORMS = {"frobenius", "relative_update"}
SPECTRA = {"spectral_norm", "spectral_ratio", "stable_rank", "top1pct_ratio", "effective_rank", "hill_alpha",
           "spectral_shift"}
EXACT = {"numerical_rank", "min_dim", "sparsity_bf16_numel", "sparsity_bf16_bits"}


def _tolerance(output: str) -> dict:
    if output in EXACT:
        return {"rtol": 0, "atol": 0}
    if output in NORMS:
        return {"rtol": 1e-6, "atol": 0}
    if output in SPECTRA:
        return {"rtol": 1e-5, "atol": 1e-9}
    return {"rtol": 0, "atol": 1e-4}


@pytest.fixture(scope="module")
def every_metric():
    return sorted(available())


def test_every_metric_on_cuda_matches_the_cpu_float64_oracle(synthetic_runs, every_metric):
    kw = dict(base=synthetic_runs["base"], metrics=every_metric, progress=False)
    oracle = analyze([synthetic_runs["opd"]], device="cpu", spectrum_method="svd64", **kw)
    gpu = analyze([synthetic_runs["opd"]], device="cuda", **kw)
    keys = ["run", "step", "ref_step", "module", "metric"]
    both = oracle.merge(gpu, on=keys, suffixes=("_cpu", "_cuda"), validate="one_to_one")
    assert len(both) == len(oracle) == len(gpu)
    for metric, g in both.groupby("metric"):
        a, b = g.value_cpu.to_numpy(), g.value_cuda.to_numpy()
        np.testing.assert_allclose(b, a, equal_nan=True, err_msg=metric, **_tolerance(metric))


def test_gpu_executors_give_the_local_gpu_table(synthetic_runs):
    kw = dict(base=synthetic_runs["base"], progress=False, device="cuda")
    local = analyze([synthetic_runs["opd"], synthetic_runs["rl"]], **kw)
    procs = analyze([synthetic_runs["opd"], synthetic_runs["rl"]], executor="processes:2", **kw)
    pd.testing.assert_frame_equal(local, procs, check_exact=False, rtol=1e-12)


def test_ray_shares_one_gpu_between_tasks(synthetic_runs):
    pytest.importorskip("ray")
    kw = dict(base=synthetic_runs["base"], progress=False, device="cuda")
    local = analyze([synthetic_runs["opd"]], **kw)
    shared = analyze([synthetic_runs["opd"]], executor="ray,workers=2,num_gpus=0.5", **kw)
    pd.testing.assert_frame_equal(local, shared, check_exact=False, rtol=1e-12)
