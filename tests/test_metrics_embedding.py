"""embedding_shift (opd_dynamics/metrics/embedding_shift.py): planted rotations and shifts of chosen rows with known
similarities, a float64 numpy/scipy oracle, token-id files, and rows from a real analysis of runs on disk."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy.linalg import subspace_angles

from opd_dynamics.errors import OPDError
from opd_dynamics.metrics.embedding_shift import joint_pca, read_token_ids, shift_values, used_token_ids
from opd_dynamics.metrics.registry import Spec
from helpers import view_of


def rotation(d: int, phi: float) -> np.ndarray:
    """Block-diagonal rotation by φ in d/2 orthogonal planes: every vector turns by exactly φ."""
    r = np.zeros((d, d))
    c, s = math.cos(phi), math.sin(phi)
    for i in range(0, d, 2):
        r[i:i + 2, i:i + 2] = [[c, -s], [s, c]]
    return r


def embed_view(e0, et):
    return view_of(e0, et, kind="embed")


def run(e0, et, **args):
    return Spec("embedding_shift", args).build()(embed_view(e0, et))


@pytest.mark.parametrize("phi", [0.1, 0.5, 1.2])
def test_planted_rotation_of_chosen_rows_gives_cos_phi(phi, tmp_path):
    rng = np.random.default_rng(0)
    e0 = rng.standard_normal((40, 8))
    chosen = [3, 7, 11, 20, 31]
    et = e0.copy()
    et[chosen] = e0[chosen] @ rotation(8, phi).T
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(chosen))
    r = run(e0, et, tokens=str(ids))
    assert r["embedding_cosine"] == pytest.approx(math.cos(phi), abs=1e-6)
    assert r["embedding_relative_shift"] == pytest.approx(2 * math.sin(phi / 2), rel=1e-5)
    assert r["embedding_tokens"] == 5
    untouched = tmp_path / "other.json"
    untouched.write_text(" ".join(str(i) for i in range(40) if i not in chosen))
    r = run(e0, et, tokens=str(untouched))
    # (ΔW is formed in float32 as the engine does: the untouched rows move by float32 rounding only)
    assert r["embedding_cosine"] == pytest.approx(1.0, abs=1e-12) and r["embedding_relative_shift"] < 1e-7
    assert r["embedding_pca_similarity"] == pytest.approx(1.0) and r["embedding_pca_displacement"] < 1e-6


def test_a_constant_shift_moves_points_but_not_the_axes():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6))
    q = np.linalg.qr(x - x.mean(0))[0]  # centred, orthonormal columns: the sample covariance is exactly diagonal
    e0 = q * np.array([5, 3, 1, 1, 1, 1]) * np.sqrt(200)  # top-2 axes e₁, e₂
    c = np.array([4.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # every token moves by 4 along e₁
    r = shift_values(e0, e0 + c, k=2)
    assert r["embedding_pca_similarity"] == pytest.approx(1.0)  # centred PCA: a translation keeps the axes
    assert r["embedding_pca_similarity_chance"] == pytest.approx(2 / 6)
    assert r["embedding_cosine"] < 1
    # the joint PCA's plane is still (e₁, e₂), so each token moves by exactly |c| = 4 in it
    p0, pt = joint_pca(e0, e0 + c, 2)
    assert np.allclose(np.linalg.norm(pt - p0, axis=1), 4.0)
    spread = np.sqrt(((p0 - p0.mean(0)) ** 2).sum(1).mean())
    assert r["embedding_pca_displacement"] == pytest.approx(4.0 / spread, rel=1e-9)


def test_identical_rows_sit_at_one_and_random_rows_near_their_chance_rows():
    rng = np.random.default_rng(2)
    e0 = rng.standard_normal((500, 16))
    same = shift_values(e0, e0)
    assert same["embedding_cosine"] == 1.0 and same["embedding_pca_displacement"] == 0.0
    fresh = shift_values(e0, rng.standard_normal((500, 16)), k=4)  # identity lost: a brand-new embedding table
    assert abs(fresh["embedding_cosine"] - fresh["embedding_cosine_chance"]) < 0.03
    assert abs(fresh["embedding_cosine"]) < 0.05 and fresh["embedding_pca_similarity_chance"] == 0.25


def embedding_oracle(e0: np.ndarray, et: np.ndarray, k: int = 2) -> dict[str, float]:
    """Every embedding_shift row in float64 numpy/scipy (SVD-based PCA, scipy's principal angles)."""
    n, d = e0.shape
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    axes = lambda x: np.linalg.svd(x - x.mean(0), full_matrices=False)[2][:k].T  # noqa: E731
    both = np.vstack([e0, et])
    proj = (both - both.mean(0)) @ axes(both)
    p0, pt = proj[:n], proj[n:]
    return {"embedding_cosine": (unit(e0) * unit(et)).sum(1).mean(),
            "embedding_cosine_chance": (unit(np.roll(e0, 1, 0)) * unit(et)).sum(1).mean(),
            "embedding_relative_shift": np.linalg.norm(et - e0) / np.linalg.norm(e0),
            "embedding_pca_similarity": (np.cos(subspace_angles(axes(e0), axes(et))) ** 2).sum() / k,
            "embedding_pca_similarity_chance": k / d,
            "embedding_pca_displacement": np.sqrt(((pt - p0) ** 2).sum(1).mean())
            / np.sqrt(((p0 - p0.mean(0)) ** 2).sum(1).mean()),
            "embedding_tokens": float(n)}


def test_matches_float64_oracle():
    rng = np.random.default_rng(3)
    e0 = rng.standard_normal((60, 10)) @ np.diag(np.linspace(3, 0.5, 10))
    et = e0 + 0.3 * rng.standard_normal((60, 10))
    r = shift_values(e0, et, k=3)
    for key, value in embedding_oracle(e0, et, k=3).items():
        assert r[key] == pytest.approx(value, rel=1e-9), key


def test_only_embedding_matrices_give_rows():
    e0 = np.random.default_rng(4).standard_normal((16, 8))
    assert Spec("embedding_shift").build()(view_of(e0, e0 + 1)) == {}  # an mlp_up view
    assert Spec("embedding_shift", {"kinds": "embed,mlp_up"}).build()(view_of(e0, e0 + 1))["embedding_tokens"] == 16
    assert Spec("embedding_shift", {"kinds": "*"}).build()(view_of(e0, e0 + 1))["embedding_tokens"] == 16


def test_token_id_files_and_their_errors(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text("5 3 3\n9")
    assert read_token_ids(str(p)) == (3, 5, 9)

    class Tok:
        def __call__(self, texts, add_special_tokens=False):
            return {"input_ids": [[ord(c) - 40 for c in t] for t in texts]}

    assert used_token_ids(["1+2=3"], Tok(), tmp_path / "u.json") == [3, 9, 10, 11, 21]
    assert read_token_ids(str(tmp_path / "u.json")) == (3, 9, 10, 11, 21)
    for text in ("[1, \"a\"]", "[]", "oops"):
        bad = tmp_path / f"bad{len(text)}.json"
        bad.write_text(text)
        with pytest.raises(OPDError):
            read_token_ids(str(bad))
    with pytest.raises(OPDError, match="cannot read"):
        read_token_ids(str(tmp_path / "missing.json"))
    far = tmp_path / "far.json"
    far.write_text("[99]")
    with pytest.raises(OPDError, match="beyond"):
        run(np.ones((8, 4)), np.ones((8, 4)), tokens=str(far))


def test_analyze_writes_rows_for_the_embedding_only(synthetic_runs, tmp_path):
    from opd_dynamics import analyze

    base = synthetic_runs["base"]
    sd = load_file(str(base / "model.safetensors"))
    key = next(k for k in sd if "embed_tokens" in k)
    e0 = sd[key].to(torch.float64).numpy()
    chosen = [1, 2, 5, 8]
    et = e0.copy()
    et[chosen] = e0[chosen] @ rotation(e0.shape[1], 0.7).T
    sd[key] = torch.tensor(et, dtype=sd[key].dtype)
    ck = tmp_path / "run" / "checkpoint-1"
    ck.mkdir(parents=True)
    save_file(sd, str(ck / "model.safetensors"))
    shutil.copy(base / "config.json", ck / "config.json")
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(chosen))
    df = analyze([tmp_path / "run"], base=base, metrics=[f"embedding_shift:tokens={ids}"], progress=False)
    assert set(df.kind) == {"embed"} and set(df.metric) == set(Spec("embedding_shift").info.outputs)
    value = df.set_index("metric").value
    assert value["embedding_cosine"] == pytest.approx(math.cos(0.7), abs=1e-5)
