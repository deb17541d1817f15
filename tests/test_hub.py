"""``hf://org/repo@revision`` through huggingface_hub's own ``HfFileSystem`` and ``HfApi``, pointed (with
``--storage-option endpoint=…``) at a local stand-in for the Hub (tests/hub_server.py): the Hub is not reachable
here, so the suite's offline mode is lifted for this local server only.

Tested: revision patterns and lists as runs, steps from revision names, the same table as the local copy, a tensor
read as one ranged request of its own bytes, unknown revisions. Not tested: huggingface.co itself (auth, gated
repos, CDN redirects, tree pagination).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("huggingface_hub")

from hub_server import HubServer  # noqa: E402

import opd_dynamics as od  # noqa: E402
from opd_dynamics.io.safetensors_file import HEADER_PROBE, SafetensorsFile  # noqa: E402
from opd_dynamics.io.storage import StorageConfig, as_path  # noqa: E402


@pytest.fixture(scope="module")
def hub(synthetic_runs, tmp_path_factory):
    """org/model with branches step-0 (the base), step-1, step-2, step-4, step-8 (the OPD run)."""
    root = tmp_path_factory.mktemp("hub")
    repo = root / "org" / "model"
    shutil.copytree(synthetic_runs["base"], repo / "step-0")
    for ck in sorted(Path(synthetic_runs["opd"]).glob("checkpoint-*")):
        shutil.copytree(ck, repo / f"step-{ck.name.split('-')[1]}")
    server = HubServer(root).start()
    yield server
    server.stop()


@pytest.fixture
def online(monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the "Hub" is a local server


def _cfg(hub) -> StorageConfig:
    return StorageConfig(options={"endpoint": hub.url}, cache_dir=False, retries=0)


def test_a_revision_pattern_is_a_run_with_the_local_table(hub, online, synthetic_runs):
    local = od.analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], names=["model"], progress=False,
                       metrics=["spectral_norm", "effective_rank"])
    remote = od.analyze(["hf://org/model@step-*"], base="hf://org/model@step-0", storage=_cfg(hub), progress=False,
                        metrics=["spectral_norm", "effective_rank"])
    assert sorted(remote.step.unique()) == [1, 2, 4, 8] and set(remote.run) == {"model"}
    pd.testing.assert_frame_equal(local.reset_index(drop=True), remote.reset_index(drop=True))
    assert hub.log and all(rng.startswith("bytes=") for _, rng, _ in hub.log)  # ranged reads only


@pytest.mark.filterwarnings("ignore:.*steps \\[2\\] are missing")
def test_a_revision_list_and_one_tensor_one_request(hub, online, synthetic_runs):
    df = od.analyze(["hf://org/model@step-1,step-4"], base="hf://org/model@step-0", storage=_cfg(hub),
                    progress=False, metrics=["frobenius"])
    assert sorted(df.step.unique()) == [1, 4]
    f = SafetensorsFile(as_path("hf://org/model@step-0/model.safetensors", _cfg(hub)))
    beyond = [k for k in f.keys() if f._entries[k]["data_offsets"][0] >= HEADER_PROBE]
    assert beyond, "the fixture's base must be larger than the header probe"
    before = len(hub.log)
    t = f.get_tensor(beyond[0])
    local = SafetensorsFile(Path(synthetic_runs["base"]) / "model.safetensors")
    assert (t == local.get_tensor(beyond[0])).all()
    assert [n for _, _, n in hub.log[before:]] == [f.nbytes(beyond[0])]


def test_unknown_revisions_are_clear_errors(hub, online):
    with pytest.raises(od.OPDError, match=r"hf://org/model@step-999: no such directory"):
        od.analyze(["hf://org/model@step-999"], base="hf://org/model@step-0", storage=_cfg(hub), progress=False)
    with pytest.raises(od.OPDError, match=r"no branch or tag matches 'ckpt-\*'"):
        od.analyze(["hf://org/model@ckpt-*"], base="hf://org/model@step-0", storage=_cfg(hub), progress=False)
