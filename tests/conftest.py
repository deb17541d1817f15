"""Session fixtures built in code: tiny synthetic runs in a real HF Trainer layout (no downloads)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def synthetic_runs(tmp_path_factory):
    """{'base': dir, 'opd': run dir, 'rl': run dir} with checkpoint-{1,2,4,8}/ of a 2-layer Llama."""
    from opd_dynamics.synthetic import make_synthetic_runs

    return make_synthetic_runs(tmp_path_factory.mktemp("synthetic"), steps=(1, 2, 4, 8), layers=2, hidden=32)
