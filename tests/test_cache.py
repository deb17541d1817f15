"""Incremental analysis: a re-run reads only new checkpoints and writes the table a fresh run writes."""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from opd_dynamics import analyze
from opd_dynamics.io.checkpoint import Checkpoint
from opd_dynamics.synthetic import make_synthetic_runs

METRICS = ["frobenius", "spectral_norm", "effective_rank", "stable_rank", "alignment_to_final", "subspace_locking",
           "rank1_pca_evr", "principal_angles:k=4"]


@pytest.fixture(scope="session")
def long_run(tmp_path_factory):
    """A 20-checkpoint planted run of a 1-layer Llama (hidden 16): steps 1..20."""
    return make_synthetic_runs(tmp_path_factory.mktemp("long"), steps=tuple(range(1, 21)), kinds=("opd",),
                               layers=1, hidden=16)


def _partial(long_run, dst, steps):
    dst.mkdir(exist_ok=True)
    for s in steps:
        if not (dst / f"checkpoint-{s}").exists():
            shutil.copytree(long_run["opd"] / f"checkpoint-{s}", dst / f"checkpoint-{s}")
    return dst


@pytest.fixture
def reads(monkeypatch):
    """Tensor reads per checkpoint directory name, counted through ``Checkpoint.get_tensor``."""
    count: Counter = Counter()
    real = Checkpoint.get_tensor

    def counted(self, name):
        count[self.path.name] += 1
        return real(self, name)

    monkeypatch.setattr(Checkpoint, "get_tensor", counted)
    return count


def _cells(out):
    return json.loads((out / "manifest.json").read_text())["settings"]["cells"]


@pytest.mark.parametrize("against", ["base", "prev"])
def test_adding_checkpoints_reads_only_them_and_matches_a_fresh_run(long_run, tmp_path, reads, against):
    run, out = _partial(long_run, tmp_path / "opd", range(1, 17)), tmp_path / "res"
    kw = dict(base=long_run["base"], metrics=METRICS, against=against, progress=False)
    analyze([run], out=out, **kw)
    assert reads["checkpoint-16"] > 0
    _partial(long_run, run, range(1, 21))
    reads.clear()
    again = analyze([run], out=out, **kw)
    new = {f"checkpoint-{s}" for s in range(17, 21)}
    n_tensors = len(Checkpoint(run / "checkpoint-17").keys())
    assert {k for k in reads if k.startswith("checkpoint-")} <= new | ({"checkpoint-16"} if against == "prev" else set())
    assert all(reads[k] == n_tensors for k in new)
    if against == "prev":  # step 17 is measured against step 16: that one is read again, nothing older
        assert reads["checkpoint-16"] == n_tensors
    fresh = analyze([run], **kw)
    pd.testing.assert_frame_equal(again, fresh)
    assert set(again.step) == set(range(1, 21))
    assert _cells(out)["reused"] > 0


def test_nothing_new_reads_nothing_and_no_cache_recomputes(long_run, tmp_path, reads):
    run, out = _partial(long_run, tmp_path / "opd", range(1, 9)), tmp_path / "res"
    kw = dict(base=long_run["base"], metrics=METRICS, progress=False)
    first = analyze([run], out=out, **kw)
    reads.clear()
    second = analyze([run], out=out, **kw)
    assert sum(reads.values()) == 0 and _cells(out)["computed"] == 0
    pd.testing.assert_frame_equal(first, second)
    third = analyze([run], out=out, cache=False, **kw)
    assert reads["checkpoint-1"] > 0 and _cells(out)["reused"] == 0
    pd.testing.assert_frame_equal(first, third)


def test_a_rewritten_checkpoint_is_recomputed(long_run, tmp_path, reads):
    run, out = _partial(long_run, tmp_path / "opd", range(1, 9)), tmp_path / "res"
    kw = dict(base=long_run["base"], metrics=METRICS, progress=False)
    before = analyze([run], out=out, **kw)
    f = run / "checkpoint-5" / "model.safetensors"
    sd = {k: v * 1.01 if v.ndim == 2 else v for k, v in load_file(f).items()}
    save_file(sd, f, metadata={"format": "pt"})
    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime file systems: still a new identity
    reads.clear()
    after = analyze([run], out=out, **kw)
    assert reads["checkpoint-5"] > 0 and reads["checkpoint-4"] == 0
    pd.testing.assert_frame_equal(after, analyze([run], **kw))
    changed = before.merge(after, on=["run", "step", "ref_step", "module", "metric"])
    assert (changed[changed.step == 5].value_x != changed[changed.step == 5].value_y).any()


def test_a_new_metric_reuses_the_old_cells(long_run, tmp_path):
    run, out = _partial(long_run, tmp_path / "opd", range(1, 5)), tmp_path / "res"
    analyze([run], out=out, base=long_run["base"], metrics=["frobenius"], progress=False)
    both = analyze([run], out=out, base=long_run["base"], metrics=["frobenius", "spectral_norm"], progress=False)
    assert _cells(out)["reused"] > 0 and _cells(out)["computed"] > 0
    pd.testing.assert_frame_equal(both, analyze([run], base=long_run["base"], metrics=["frobenius", "spectral_norm"],
                                                progress=False))


def test_a_half_written_checkpoint_is_left_out_with_a_warning(long_run, tmp_path):
    run = _partial(long_run, tmp_path / "opd", range(1, 5))
    f = run / "checkpoint-4" / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)
    with pytest.warns(UserWarning, match="checkpoint-4: left out, checkpoint incomplete"):
        df = analyze([run], base=long_run["base"], metrics=["frobenius"], progress=False)
    assert set(df.step) == {1, 2, 3} and df.attrs["skipped"] and "opd/4" in df.attrs["skipped"][0]
    with pytest.raises(Exception, match="truncated"):
        analyze([run], base=long_run["base"], metrics=["frobenius"], progress=False, skip_incomplete=False)


def test_cli_exit_status_says_whether_something_was_skipped(long_run, tmp_path):
    from cli_runner import run_cli

    run, out = _partial(long_run, tmp_path / "opd", range(1, 4)), tmp_path / "res"
    cmd = ["analyze", run, "--base", long_run["base"], "-o", out, "-m", "frobenius", "-q"]
    assert run_cli(*cmd).returncode == 0
    (run / "checkpoint-9").mkdir()
    shutil.copy(long_run["opd"] / "checkpoint-9" / "config.json", run / "checkpoint-9")
    data = (long_run["opd"] / "checkpoint-9" / "model.safetensors").read_bytes()
    (run / "checkpoint-9" / "model.safetensors").write_bytes(data[: len(data) - 100])
    r = run_cli(*cmd)
    assert r.returncode == 3, r.stderr
    assert "checkpoint-9: left out, checkpoint incomplete" in r.stderr
    assert set(pd.read_parquet(out / "metrics.parquet").step) == {1, 2, 3}


def test_states_of_trajectory_metrics_are_kept_without_pickle(long_run, tmp_path):
    run, out = _partial(long_run, tmp_path / "opd", range(1, 5)), tmp_path / "res"
    analyze([run], out=out, base=long_run["base"], metrics=["alignment_to_final"], progress=False)
    files = list((out / "cache" / "states").glob("*.safetensors"))
    assert files and all(f.stat().st_size < 2**20 for f in files)
    sd = load_file(files[0])
    assert all(t.dtype == torch.float64 for t in sd.values())


def test_a_changed_default_does_not_reuse_cells_computed_under_the_old_one(long_run, tmp_path, monkeypatch):
    """Cells are keyed on the effective settings (defaults filled in): when a metric's default changes (as
    alignment_to_final's mode did, paired → subspace), a re-run recomputes them instead of serving stale numbers."""
    import inspect

    from opd_dynamics.metrics import direction
    from opd_dynamics.metrics.registry import get

    run, out = _partial(long_run, tmp_path / "opd", range(1, 5)), tmp_path / "res"
    kw = dict(base=long_run["base"], metrics=["alignment_to_final"], progress=False)
    now = analyze([run], out=out, **kw)
    factory = get("alignment_to_final").factory
    sig = inspect.signature(factory)
    old = sig.replace(parameters=[p.replace(default="paired") if p.name == "mode" else p
                                  for p in sig.parameters.values()])
    monkeypatch.setattr(factory, "__signature__", old, raising=False)
    monkeypatch.setattr(factory, "__defaults__", (20, "left", "paired"))
    before = analyze([run], out=out, **kw)
    assert _cells(out)["computed"] > 0
    explicit = analyze([run], metrics=["alignment_to_final:mode=paired"], base=long_run["base"], progress=False)
    pd.testing.assert_frame_equal(before, explicit)
    assert not now[now.metric == "alignment_to_final"].value.equals(before[before.metric == "alignment_to_final"].value)
    assert direction is not None
