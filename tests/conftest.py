"""The one set of session fixtures, built in code once per test session (no downloads, tiny models).

=================== ============================================================================ ==========
fixture             what                                                                          built in
=================== ============================================================================ ==========
synthetic_runs      {'base', 'opd', 'rl'}: checkpoint-{1,2,4,8}/ of a 2-layer hidden-32 Llama     <1 s
                    with planted OPD-like (low-rank, locked) and RL-like updates
sharded_opd         synthetic_runs['opd'] re-saved as 3 shards + index per checkpoint             <1 s
tiny_runs           the lab's ``tiny`` reference runs (teacher, W₀, OPD / RL / SFT), seed 0        seconds
tiny_llama_runs     {'base', 'run', 'teacher'}: a 4-layer Llama, planted rank-2 drift, steps 1/2/4  <1 s
tiny_gpt2_runs      {'base', 'run'}: a 2-layer GPT-2 with fused ``c_attn``                         <1 s
gkd_runs            a chat model trained by TRL's GKDTrainer, full and LoRA (``chat_fixtures``)     ~1 min
long_table          a real analysis of synthetic_runs plus an ``sft`` run and principal angles   seconds
studies             a study frame with illustrative scores (figure tests)                          <1 s
fresh_imports       sys.modules of one fresh interpreter after each entry point (laziness checks)  ~6 s
=================== ============================================================================ ==========

Builders live beside this file (``intervention_fixtures.py``, ``chat_fixtures.py``, ``plot_data.py``); tests ask
for the fixture by name and never build these a second time.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the network
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))


def _collect_then_freeze() -> None:
    """Collect the garbage, then move the survivors out of the cyclic collector's view (``gc.freeze``).

    The survivors are what lives as long as the session: imported modules (torch and transformers alone are about a
    million objects), session fixtures, the collected test items. Each full collection would walk them all again,
    about 0.5 s each, dozens of times per session and five times at its end (pytest's check for unraisable
    exceptions); frozen, they are skipped. Freed objects are still freed by reference counting; only reference
    cycles among the frozen survivors stay until the end of the session."""
    import gc

    gc.collect()
    gc.freeze()


def pytest_collection_finish(session):
    _collect_then_freeze()  # what collection imported


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    if nextitem is None or nextitem.path != item.path:  # a test file done, its module fixtures gone
        _collect_then_freeze()  # what its tests imported


@pytest.fixture(scope="session")
def synthetic_runs(tmp_path_factory):
    """{'base': dir, 'opd': run dir, 'rl': run dir} with checkpoint-{1,2,4,8}/ of a 2-layer Llama."""
    from opd_dynamics.synthetic import make_synthetic_runs

    return make_synthetic_runs(tmp_path_factory.mktemp("synthetic"), steps=(1, 2, 4, 8), layers=2, hidden=32)


@pytest.fixture(scope="session")
def sharded_opd(synthetic_runs, tmp_path_factory):
    """The opd trajectory re-saved as 3 shards + index per checkpoint (with a stale single file to ignore)."""
    from shards import reshard

    out = tmp_path_factory.mktemp("sharded") / "opd_sharded"
    for ck in sorted(synthetic_runs["opd"].iterdir()):
        reshard(ck, out / ck.name, n_shards=3, stray=True)
    return out


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    """The lab's ``tiny`` reference runs (a :class:`~opd_dynamics.lab.ReferenceRuns`); tests that change them copy
    ``tiny_runs.out_dir`` first."""
    from opd_dynamics.lab import build_reference_runs

    return build_reference_runs(tmp_path_factory.mktemp("tiny"), preset="tiny", seed=0, progress=False)


@pytest.fixture(scope="session")
def tiny_llama_runs(tmp_path_factory):
    from intervention_fixtures import build_tiny_llama_runs

    return build_tiny_llama_runs(tmp_path_factory.mktemp("iv-llama"))


@pytest.fixture(scope="session")
def tiny_gpt2_runs(tmp_path_factory):
    from intervention_fixtures import build_tiny_gpt2_runs

    return build_tiny_gpt2_runs(tmp_path_factory.mktemp("iv-gpt2"))


@pytest.fixture(scope="session")
def gkd_runs(tmp_path_factory):
    from chat_fixtures import build_gkd_runs

    return build_gkd_runs(tmp_path_factory.mktemp("gkd-chat"))


@pytest.fixture(scope="session")
def long_table(synthetic_runs):
    """Long table of the synthetic opd + rl runs (2 layers, steps 1–8), plus an sft run and principal angles."""
    from plot_data import analysed

    return analysed(synthetic_runs)


@pytest.fixture(scope="session")
def studies():
    from plot_data import study_frame

    return study_frame()


@pytest.fixture(scope="session")
def fresh_imports(synthetic_runs):
    """{step: sys.modules after it} from one fresh interpreter running the entry points of ``fresh_imports.py``."""
    from fresh_imports import loaded_in_turn

    return loaded_in_turn(synthetic_runs["opd"], synthetic_runs["base"])


@pytest.fixture
def one_thread(monkeypatch):
    """``OPD_DYNAMICS_THREADS=1`` for a test that compares tables bit for bit across executors: float64 BLAS/LAPACK
    results can differ in the last bit with the thread count (``local`` picks its threads from the load of the moment,
    each worker gets ``cpus // workers``; docs/performance.md, "Threads")."""
    monkeypatch.setenv("OPD_DYNAMICS_THREADS", "1")
