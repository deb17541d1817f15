"""Cross-run mask consistency (opd_dynamics/consistency.py): planted masks of known overlap, chance levels against
Monte Carlo, a float64 numpy oracle, runs on disk end to end, and the CLI's one-line errors."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from safetensors.torch import load_file, save_file

from opd_dynamics.consistency import consistency, mask_consistency, overall, parse_mask, top_mask
from opd_dynamics.errors import OPDError
from opd_dynamics.table import load, validate

def test_planted_masks_of_known_overlap():
    n = 1000
    a = torch.zeros(n, dtype=torch.bool)
    b = torch.zeros(n, dtype=torch.bool)
    a[:100] = True      # |A| = 100
    b[60:260] = True    # |B| = 200, |A∩B| = 40, |A∪B| = 260
    r = consistency(a, b)
    assert r["mask_jaccard"] == pytest.approx(40 / 260) and r["mask_overlap"] == pytest.approx(40 / 100)
    assert r["mask_overlap_chance"] == pytest.approx(200 / 1000)
    assert r["mask_jaccard_chance"] == pytest.approx(20 / (300 - 20))
    assert (r["mask_size_a"], r["mask_size_b"], r["mask_intersection"], r["mask_numel"]) == (100, 200, 40, 1000)
    same = consistency(a, a)
    assert same["mask_jaccard"] == 1.0 and same["mask_overlap"] == 1.0


def test_chance_rows_match_independent_random_masks():
    rng = np.random.default_rng(0)
    n, ka, kb = 2000, 150, 400
    jac, ovl = [], []
    for _ in range(2000):
        a = torch.zeros(n, dtype=torch.bool)
        b = torch.zeros(n, dtype=torch.bool)
        a[torch.as_tensor(rng.choice(n, ka, replace=False))] = True
        b[torch.as_tensor(rng.choice(n, kb, replace=False))] = True
        r = consistency(a, b)
        jac.append(r["mask_jaccard"])
        ovl.append(r["mask_overlap"])
    assert np.mean(ovl) == pytest.approx(r["mask_overlap_chance"], rel=0.02)
    assert np.mean(jac) == pytest.approx(r["mask_jaccard_chance"], rel=0.02)


def test_matches_float64_numpy_oracle():
    rng = np.random.default_rng(1)
    da, db = rng.standard_normal((2, 37, 53))
    db = 0.7 * da + 0.3 * db  # correlated updates: overlap above chance
    for q in (0.01, 0.1, 0.5):
        k = math.ceil(q * da.size)
        ma = np.abs(da) >= np.sort(np.abs(da).ravel())[-k]
        mb = np.abs(db) >= np.sort(np.abs(db).ravel())[-k]
        r = consistency(top_mask(torch.tensor(da), q), top_mask(torch.tensor(db), q))
        inter = (ma & mb).sum()
        assert r["mask_jaccard"] == pytest.approx(inter / (ma | mb).sum(), rel=1e-12)
        assert r["mask_overlap"] == pytest.approx(inter / k, rel=1e-12)
        assert r["mask_overlap_chance"] == pytest.approx(k / da.size, rel=1e-12)
        assert r["mask_overlap"] > r["mask_overlap_chance"]


def test_top_mask_keeps_ties_and_never_selects_zeros():
    d = torch.tensor([[3.0, 3.0, 1.0, 0.0]])
    assert top_mask(d, 0.25).tolist() == [[True, True, False, False]]  # the 1st largest is tied: both kept
    assert top_mask(torch.zeros(2, 2), 1.0).sum() == 0


def test_parse_mask_errors_are_one_line():
    assert parse_mask("top") == ("top", 0.01)
    for bad in ("top:0", "top:2", "top:x", "random"):
        with pytest.raises(OPDError) as e:
            parse_mask(bad)
        assert "\n" not in str(e.value) and "fix:" in str(e.value)


Q = 0.1


def _support(numel: int, run: str) -> range:
    """Planted support of one matrix: k = ⌈Q·N⌉ flat indices; run b's overlaps run a's in o = k // 4 of them."""
    k = math.ceil(Q * numel - 1e-9)
    o = k // 4
    return range(0, k) if run == "a" else range(k - o, 2 * k - o)


def _planted_runs(root, synthetic_base, names=("a", "b")):
    """Runs whose ΔW is large exactly on :func:`_support` of each 2-D layer matrix and ~1e-7 elsewhere, so the
    top-Q mask of each matrix is exactly that support."""
    base = load_file(str(synthetic_base / "model.safetensors"))
    rng = np.random.default_rng(0)
    out = {}
    for name in names:
        for step in (1, 2):
            sd = {}
            for k, v in base.items():
                if v.ndim == 2 and "layers" in k:
                    d = torch.tensor(rng.standard_normal(v.numel()) * 1e-7, dtype=torch.float32)
                    support = list(_support(v.numel(), name))
                    d[support] = step * (1.0 + torch.rand(len(support)))
                    v = v + d.reshape(v.shape)
                sd[k] = v.contiguous()
            ck = root / name / f"checkpoint-{step}"
            ck.mkdir(parents=True)
            save_file(sd, str(ck / "model.safetensors"))
            shutil.copy(synthetic_base / "config.json", ck / "config.json")
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from opd_dynamics.synthetic import make_synthetic_runs

    root = tmp_path_factory.mktemp("mask")
    base = make_synthetic_runs(root / "syn", steps=(1,), kinds=(), layers=1, hidden=16)["base"]
    return base, _planted_runs(root, base)


def test_runs_on_disk_recover_the_planted_overlap(planted, tmp_path):
    base, runs = planted
    df = mask_consistency(runs["a"], runs["b"], base=base, mask=f"top:{Q}", progress=False, out=tmp_path / "res")
    validate(df)
    assert set(df.run) == {"a~b"} and sorted(df.step.unique()) == [1, 2]
    wide = df[df.module.str.contains("layers")].pivot_table(index=["step", "module"], columns="metric", values="value")
    assert len(wide) >= 2 * 7  # q, k, v, o, gate, up, down at two steps
    k = np.ceil(Q * wide.mask_numel - 1e-9)
    o = k // 4
    assert np.allclose(wide.mask_intersection, o) and np.allclose(wide.mask_size_a, k)
    assert np.allclose(wide.mask_jaccard, o / (2 * k - o))
    e = k * k / wide.mask_numel
    assert np.allclose(wide.mask_jaccard_chance, e / (2 * k - e))
    assert np.allclose(wide.mask_overlap_chance, k / wide.mask_numel)
    assert load(tmp_path / "res").equals(df)
    pooled = overall(df[df.module.str.contains("layers")])
    assert (pooled.mask_jaccard > 2 * pooled.mask_jaccard_chance).all()


def test_a_run_against_itself_and_bf16_masks(planted):
    base, runs = planted
    df = mask_consistency(runs["a"], runs["a"], base=base, names=["a", "a2"], mask="bf16", progress=False)
    jac = df[df.metric == "mask_jaccard"]
    trained = jac.module.str.contains("layers")
    assert np.allclose(jac[trained].value, 1.0)
    assert jac[~trained].value.isna().all()  # untouched matrices (embedding, head): no update, no overlap to measure


def test_different_bases_are_refused(planted, tmp_path):
    base, runs = planted
    other = tmp_path / "other"
    shutil.copytree(base, other)
    sd = load_file(str(other / "model.safetensors"))
    key = next(k for k, v in sd.items() if v.ndim == 2 and "layers" in k)
    sd[key] = sd[key] + 1
    save_file(sd, str(other / "model.safetensors"))
    with pytest.raises(OPDError, match="same W₀"):
        mask_consistency(runs["a"], runs["b"], base=[base, other], progress=False)


def test_cli_prints_pooled_jaccard_and_one_line_errors(planted, tmp_path):
    base, runs = planted
    r = run_cli("mask-consistency", runs["a"], runs["b"], "--base", base, "-q")
    assert r.returncode == 0 and r.stdout == "", r.stderr
    r = run_cli("mask-consistency", runs["a"], runs["b"], "--base", base, "--steps", "2", "-o", tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert "mask_jaccard_chance" in r.stdout and "a~b" in r.stdout
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["mask"] == "top:0.01"
    bad = run_cli("mask-consistency", runs["a"], runs["b"], "--base", base, "--mask", "top:5", "-o", tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("error:")
    assert not (tmp_path / "bad").exists()
    h = run_cli("mask-consistency", "--help")
    assert h.returncode == 0 and "Examples" in h.stdout
