"""DCP checkpoints written by torch's own saver and accelerate's, on 2 gloo ranks, read back in one process."""
from __future__ import annotations

import io
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file

from opd_dynamics.errors import CheckpointError
from opd_dynamics.io.formats import dcp
from opd_dynamics.io.formats.dcp_index import DcpIndex

LAYOUTS = ("torchtitan", "torchtitan-nested", "accelerate")

pytestmark = pytest.mark.slow  # dcp_writers spawns a 2-rank torch.distributed writer per layout


@pytest.fixture(scope="session")
def dcp_runs(tmp_path_factory):
    """{'hf': safetensors run, 'base': base dir, layout: DCP run} — the same 2-step trajectory in each layout."""
    import dcp_writers
    from opd_dynamics.synthetic import make_synthetic_runs

    root = tmp_path_factory.mktemp("dcp")
    # vocab 61 and intermediate 48 split unevenly / evenly over 2 ranks: both chunk shapes are exercised
    hf = make_synthetic_runs(root / "hf", steps=(1, 2), kinds=("opd",), layers=2, hidden=32, vocab=61)
    runs = dcp_writers.write(hf["opd"], root, list(LAYOUTS))
    return {"hf": hf["opd"], "base": hf["base"], **runs}


def _step_dir(runs, layout, step):
    root = runs[layout]
    return root / "checkpoint" / f"step-{step}" if layout.startswith("torchtitan") else root / f"checkpoint-{step}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reads_every_tensor_exactly_as_saved(dcp_runs, layout):
    for step in (1, 2):
        expected = load_file(dcp_runs["hf"] / f"checkpoint-{step}" / "model.safetensors")
        where = dcp.detect(_step_dir(dcp_runs, layout, step))
        assert where is not None and (where.name == "pytorch_model_fsdp_0") == (layout == "accelerate")
        r = dcp.open(where, base_config={"model_type": "llama"})
        assert sorted(r.keys()) == sorted(expected), "optimizer/scheduler entries must be skipped"
        for name, t in expected.items():
            assert r.shape(name) == tuple(t.shape) and r.dtype(name) == torch.float32
            assert torch.equal(r.get_tensor(name), t), name
        assert r.reads == len(expected) and not r.partial and r.format == "dcp"
        assert r.file_of("lm_head.weight").suffix == ".distcp"


def test_uneven_shards_come_from_both_ranks(dcp_runs):
    ix = DcpIndex(dcp.detect(_step_dir(dcp_runs, "torchtitan", 1)))
    chunks = ix.tensors()["model.embed_tokens.weight"].chunks
    assert [tuple(c.sizes) for c in chunks] == [(31, 32), (30, 32)]  # 61 rows over 2 ranks
    assert {p.name for p in ix.files_of("model.embed_tokens.weight")} == {"__0_0.distcp", "__1_0.distcp"}
    assert torch.equal(ix.read("model.embed_tokens.weight", lead=(40,)),
                       ix.read("model.embed_tokens.weight")[40])


def test_config_comes_from_the_base_when_absent(dcp_runs):
    where = dcp.detect(_step_dir(dcp_runs, "accelerate", 1))
    assert not (where / "config.json").exists() and not (where.parent / "config.json").exists()
    assert dcp.open(where, base_config={"hidden_size": 32}).config == {"hidden_size": 32}
    assert dcp.open(where).config == {}


def test_missing_rank_file_is_named(dcp_runs, tmp_path):
    src = dcp.detect(_step_dir(dcp_runs, "torchtitan", 1))
    d = shutil.copytree(src, tmp_path / "step-1")
    (d / "__1_0.distcp").unlink()
    r = dcp.open(d)
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp: missing rank file"):
        r.get_tensor("lm_head.weight")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_metadata_with_foreign_classes_is_refused(dcp_runs, tmp_path, capsys):
    src = dcp.detect(_step_dir(dcp_runs, "torchtitan", 1))
    d = shutil.copytree(src, tmp_path / "step-1")
    md = pickle.loads((d / ".metadata").read_bytes())
    md.planner_data = _Evil()
    (d / ".metadata").write_bytes(pickle.dumps(md))
    with pytest.raises(CheckpointError, match=r"\.metadata: unpickling needs builtins\.print"):
        dcp.open(d)
    assert "pwned" not in capsys.readouterr().out


def test_detect_ignores_other_layouts(tmp_path):
    assert dcp.detect(tmp_path) is None
    (tmp_path / ".metadata").write_bytes(pickle.dumps({}))
    assert dcp.detect(tmp_path) is None  # no .distcp files
    (tmp_path / "__0_0.distcp").write_bytes(b"")
    assert dcp.detect(tmp_path) == tmp_path
    (tmp_path / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    assert dcp.detect(tmp_path) is None  # Megatron's, read by the megatron format


def test_not_a_metadata_file_is_one_line(tmp_path):
    (tmp_path / ".metadata").write_bytes(b"garbage")
    (tmp_path / "__0_0.distcp").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a readable DCP index"):
        dcp.open(tmp_path)
    buf = io.BytesIO()
    pickle.dump({"a": 1}, buf)
    (tmp_path / ".metadata").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="not a DCP Metadata"):
        dcp.open(tmp_path)


def test_analyze_tables_equal_safetensors(dcp_runs, tmp_path):
    """The same trajectory as HF safetensors, torchtitan (flat and nested) and accelerate DCP: one table."""
    from format_tables import assert_same_tables

    assert_same_tables(dcp_runs["hf"], dcp_runs["base"], [dcp_runs[layout] for layout in LAYOUTS], tmp_path / "res")


def test_one_tensor_reads_only_its_chunks_bytes(dcp_runs, tmp_path, monkeypatch):
    """Reading one tensor touches only its chunks' byte ranges, never a whole rank file; a cut file is named."""
    from opd_dynamics.io.formats import dcp_index

    where = dcp.detect(_step_dir(dcp_runs, "torchtitan", 2))
    r = dcp.open(where)
    windows = []  # every read goes through a window of the file that is exactly one chunk's byte range
    orig = dcp_index._Range.__init__
    monkeypatch.setattr(dcp_index._Range, "__init__",
                        lambda self, f, start, length: windows.append((f.name, start, length)) or orig(self, f, start, length))
    key = "model.layers.1.mlp.down_proj.weight"
    r.get_tensor(key)
    infos = [r.index._info(key, c) for c in r.index.tensors()[key].chunks]
    assert sorted(windows) == sorted((str(where / i.relative_path), i.offset, i.length) for i in infos)
    assert sum(i.length for i in infos) < min(p.stat().st_size for p in where.glob("*.distcp")) / 2
    d = shutil.copytree(where, tmp_path / "step-2")
    f = d / "__1_0.distcp"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"__1_0\.distcp: truncated"):
        for name in dcp.open(d).keys():
            dcp.open(d).get_tensor(name)
