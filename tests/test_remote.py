"""Checkpoints in object storage: a real S3 API (moto's server on 127.0.0.1) read with s3fs by byte range.

The same sharded trajectory is analysed from local disk and from a bucket; the tables must be identical, the bytes
the server served must be the header + tensor bytes the analysis needs (within a few percent), and a missing object,
an access denied (S3's 403 AccessDenied, injected by the proxy — see tests/s3_server.py) and a connection dropped
mid-read must each end in one ``error:`` line, exit status 2 and nothing written.
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from cli_runner import run_cli  # noqa: E402
from s3_server import Proxy, S3Server  # noqa: E402
from shards import reshard, to_bin  # noqa: E402

import opd_dynamics as od  # noqa: E402
from opd_dynamics.engine import plan  # noqa: E402
from opd_dynamics.errors import CheckpointError  # noqa: E402
from opd_dynamics.io.discovery import open_run  # noqa: E402
from opd_dynamics.io.safetensors_file import SafetensorsFile  # noqa: E402
from opd_dynamics.io.storage import StorageConfig, as_path  # noqa: E402
from opd_dynamics.select import Selector  # noqa: E402

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3(synthetic_runs, tmp_path_factory):
    """The moto server with ``s3://bkt/runs/opd`` (3 shards per checkpoint), ``s3://bkt/models/base`` and the
    local copies they were uploaded from."""
    for k, v in CREDS.items():
        os.environ.setdefault(k, v)
    local = tmp_path_factory.mktemp("sharded") / "opd"
    for ck in sorted(Path(synthetic_runs["opd"]).glob("checkpoint-*")):
        reshard(ck, local / ck.name)
    server = S3Server().start()
    server.upload(local, "bkt", "runs/opd")
    server.upload(synthetic_runs["base"], "bkt", "models/base")
    yield {"server": server, "local": local, "base": Path(synthetic_runs["base"])}
    server.stop()


@pytest.fixture
def proxy(s3):
    p = Proxy(s3["server"].port).start()
    yield p
    p.stop()


def _config(proxy, **kw) -> StorageConfig:
    return StorageConfig(options={"endpoint_url": proxy.url}, **{"cache_dir": False, **kw})


def _needed_bytes(run) -> int:
    """Header bytes of every file the run opens + the bytes of every tensor the engine reads."""
    tensors = [p.tensor for p in plan(run, Selector.parse([]))]
    total = 0
    for ck in [run.base, *run.steps.values()]:
        files = {str(ck.file_of(t)): ck._files[str(ck.file_of(t))] for t in ck.keys()}
        total += sum(f._data_start for f in files.values())
        total += sum(ck._file(t).nbytes(t) for t in tensors)
        total += sum(len((Path(str(ck.path)) / j).read_bytes()) for j in ("model.safetensors.index.json",)
                     if (Path(str(ck.path)) / j).exists())
    return total


def test_s3_run_gives_the_local_table_reading_only_what_it_needs(s3, proxy):
    local = od.analyze([s3["local"]], base=s3["base"], progress=False)
    remote = od.analyze(["s3://bkt/runs/opd/"], base="s3://bkt/models/base", progress=False, storage=_config(proxy))
    pd.testing.assert_frame_equal(local.reset_index(drop=True), remote.reset_index(drop=True))
    # every object GET was a ranged one, and the server served what the analysis needs (+ config.json)
    gets = [e for e in proxy.log if e[0] == "GET" and "?" not in e[1]]
    assert gets and all(rng.startswith("bytes=") for *_, rng in gets)
    needed = _needed_bytes(open_run(s3["local"], base=s3["base"])) + len((s3["base"] / "config.json").read_bytes())
    served = proxy.object_bytes()
    assert 0.97 <= served / needed <= 1.03, (served, needed)


def test_one_tensor_costs_one_request_of_its_own_bytes(s3, proxy):
    url = "s3://bkt/models/base/model.safetensors"
    f = SafetensorsFile(as_path(url, _config(proxy)))
    local = SafetensorsFile(s3["base"] / "model.safetensors")
    beyond = [k for k in f.keys() if f._entries[k]["data_offsets"][1] > len(f._prefix)]  # not in the header probe
    name = max(beyond, key=f.nbytes)
    before = len(proxy.log)
    t = f.get_tensor(name)
    assert (t == local.get_tensor(name)).all()
    new = proxy.log[before:]
    assert len(new) == 1 and new[0][3] == f.nbytes(name)


def test_large_ranges_split_and_coalesce(s3, proxy):
    cfg = _config(proxy, chunk_bytes=1000, concurrency=4)
    path = as_path("s3://bkt/models/base/model.safetensors", cfg)
    data = (s3["base"] / "model.safetensors").read_bytes()
    st = path.storage
    assert bytes(st.read_range(path, 100, 5000)) == data[100:5100]  # 5 concurrent parts
    before = len(proxy.log)
    a, b, c = st.read_ranges(path, [(300, 50), (0, 100), (100, 200)])  # adjacent: one request
    assert (bytes(a), bytes(b), bytes(c)) == (data[300:350], data[:100], data[100:300])
    assert len(proxy.log) - before == 1


def test_header_cache_skips_refetching_unchanged_headers(s3, proxy, tmp_path):
    cfg = _config(proxy, cache_dir=tmp_path / "cache")
    od.analyze(["s3://bkt/runs/opd"], base="s3://bkt/models/base", progress=False, storage=cfg, steps=[1])
    first = proxy.object_bytes()
    proxy.log.clear()
    cfg2 = _config(proxy, cache_dir=tmp_path / "cache", retries=2)  # a fresh storage, same cache directory
    od.analyze(["s3://bkt/runs/opd"], base="s3://bkt/models/base", progress=False, storage=cfg2, steps=[1])
    assert not [e for e in proxy.log if e[4].startswith("bytes=0-")]  # no header read went to the server
    assert proxy.object_bytes() < first / 2
    assert cfg2 is not None and as_path("s3://bkt/x", cfg2).storage.cache.hits > 0


def _cli(*args, proxy, out):
    env = {**os.environ, **CREDS}
    r = run_cli("analyze", *args, "--storage-option", f"endpoint_url={proxy.url}", "--no-remote-cache", "--retries", "1",
                "-o", out, "-q", env=env)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert not out.exists()
    print(lines[0])
    return lines[0]


@pytest.mark.parametrize("case", ["missing_shard", "denied", "dropped"])
def test_remote_failures_are_one_line_and_write_nothing(case, s3, proxy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    base = "s3://bkt/models/base"
    if case == "missing_shard":
        s3["server"].upload(s3["local"] / "checkpoint-2", "bkt", "broken/checkpoint-2")
        s3["server"].client().delete_object(Bucket="bkt", Key="broken/checkpoint-2/model-00002-of-00003.safetensors")
        line = _cli("s3://bkt/broken", "--base", base, proxy=proxy, out=out)
        assert "s3://bkt/broken/checkpoint-2/model-00002-of-00003.safetensors: missing shard" in line
    elif case == "denied":
        proxy.deny = ("checkpoint-4/model-00002",)
        line = _cli("s3://bkt/runs/opd", "--base", base, proxy=proxy, out=out)
        assert "s3://bkt/runs/opd/checkpoint-4/model-00002-of-00003.safetensors: access denied (403" in line
    else:
        proxy.cut = ("checkpoint-8/model-00003",)
        # s3fs retries a cut read 5 times with its own backoff (seconds) inside each of our attempts; ours are counted
        monkeypatch.setattr(__import__("s3fs").S3FileSystem, "retries", 1)
        line = _cli("s3://bkt/runs/opd", "--base", base, proxy=proxy, out=out)
        assert "s3://bkt/runs/opd/checkpoint-8/model-00003-of-00003.safetensors: read failed after 2 attempts" in line
        assert any(status == -1 for _, _, status, _, _ in proxy.log)  # the proxy really cut a response


def test_no_such_run_and_pickles_are_clear_errors(s3, proxy, tmp_path):
    with pytest.raises(od.OPDError, match=r"^s3://bkt/runs/nope: no such directory"):
        od.analyze(["s3://bkt/runs/nope"], base="s3://bkt/models/base", storage=_config(proxy), progress=False)
    to_bin(s3["base"], tmp_path / "bin")
    s3["server"].upload(tmp_path / "bin", "bkt", "pickled/checkpoint-1")
    with pytest.raises(CheckpointError, match=r"pytorch_model.bin\), which cannot be read by byte range"):
        od.analyze(["s3://bkt/pickled"], base="s3://bkt/models/base", storage=_config(proxy), allow_pickle=True,
                   progress=False)
    rank = tmp_path / "verl" / "global_step_1" / "actor"  # detected from the listing, then refused with the reason
    rank.mkdir(parents=True)
    (rank / "model_world_size_1_rank_0.pt").write_bytes(b"not read")
    s3["server"].upload(tmp_path / "verl", "bkt", "verl")
    with pytest.raises(CheckpointError, match=r"^s3://bkt/verl/global_step_1/actor: a verl-fsdp checkpoint cannot be "
                                              r"read from remote storage \(its rank files are pickles"):
        od.analyze(["s3://bkt/verl"], base="s3://bkt/models/base", storage=_config(proxy), progress=False)


def test_a_missing_backend_names_its_extra():
    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed here")
    except ImportError:
        pass
    with pytest.raises(od.OPDError, match=r"pip install 'opd-dynamics\[gcs\]'"):
        as_path("gs://bucket/run")


def test_transient_errors_are_retried_then_reported_with_the_url():
    from fsspec.implementations.memory import MemoryFileSystem

    from opd_dynamics.io.storage import FsspecStorage

    class Flaky(MemoryFileSystem):
        fails = 0

        def open(self, path, *args, **kw):
            if Flaky.fails:
                Flaky.fails -= 1
                raise ConnectionResetError("connection reset by peer")
            return super().open(path, *args, **kw)

    fs = Flaky()
    fs.pipe("/b/obj", b"0123456789")
    Flaky.fails = 2
    st = FsspecStorage(fs, "memory", StorageConfig(retries=2, backoff=0.0, cache_dir=False))
    assert bytes(st.read_range("/b/obj", 2, 3)) == b"234"
    Flaky.fails = 5
    with pytest.raises(CheckpointError, match=r"memory:///b/obj: read failed after 3 attempts "
                                              r"\(ConnectionResetError: connection reset by peer\)"):
        st.read_range("/b/obj", 0, 4)


def test_report_inputs_read_from_a_bucket(s3, proxy, tmp_path):
    from opd_dynamics.report import load_inputs

    out = tmp_path / "results"
    od.analyze([s3["local"]], base=s3["base"], names=["opd"], metrics=["frobenius"], steps=[1, 2], out=out,
               progress=False)
    s3["server"].upload(out, "bkt", "results/opd")
    local = load_inputs([out]).table
    remote = load_inputs(["s3://bkt/results/opd"], _config(proxy)).table
    pd.testing.assert_frame_equal(local.reset_index(drop=True), remote.reset_index(drop=True))


@pytest.mark.slow
def test_worker_processes_reopen_the_bucket(s3, proxy):
    """Tasks carry the storage settings (not open connections); each worker process re-opens the s3:// run."""
    kw = dict(metrics=["frobenius", "spectral_norm"], steps=[1, 2], progress=False)
    local = od.analyze([s3["local"]], base=s3["base"], names=["opd"], **kw)
    remote = od.analyze(["s3://bkt/runs/opd"], base="s3://bkt/models/base", storage=_config(proxy),
                        executor="processes:2", **kw)
    pd.testing.assert_frame_equal(local.reset_index(drop=True), remote.reset_index(drop=True))
