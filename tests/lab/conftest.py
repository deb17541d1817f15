"""Session fixtures for the lab tests: the ``tiny`` reference runs, built once (seconds)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in these tests may reach the network

import pytest  # noqa: E402

from opd_dynamics.lab import build_reference_runs  # noqa: E402


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    return build_reference_runs(tmp_path_factory.mktemp("tiny"), preset="tiny", seed=0, progress=False)
