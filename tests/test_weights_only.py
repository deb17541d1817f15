"""Our pickle allowlist is ours: a library that widened torch's process-wide list (megatron-core does on import)
does not widen what opd-dynamics unpickles, and the process's list is given back unchanged."""
from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

import pytest
import torch

from opd_dynamics.errors import CheckpointError
from opd_dynamics.io import weights_only
from opd_dynamics.io.checkpoint import Checkpoint


def _evil(path):
    torch.save({"w": torch.ones(2), "args": argparse.Namespace(lr=1)}, path)
    return path


def test_a_widened_process_allowlist_does_not_widen_ours(tmp_path):
    f = _evil(tmp_path / "x.pt")
    before = list(torch.serialization.get_safe_globals())
    torch.serialization.add_safe_globals([argparse.Namespace, pathlib.PosixPath])
    try:
        assert torch.load(f, weights_only=True)["args"].lr == 1  # torch alone now takes it ...
        with pytest.raises(Exception, match="argparse.Namespace"):
            weights_only.load(f)  # ... we do not
        assert argparse.Namespace in torch.serialization.get_safe_globals()  # and the process keeps its list
        assert weights_only.load(f, allow=[argparse.Namespace])["args"].lr == 1  # unless the caller names it
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


@pytest.mark.slow  # megatron-core imported in a fresh interpreter (the same guard in-process: the test above)
def test_pytorch_model_bin_with_a_namespace_is_refused_after_megatron_import(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    _evil(d / "pytorch_model.bin")
    code = ("import megatron.core, argparse, torch, sys\n"  # megatron-core allows Namespace process-wide on import
            "assert argparse.Namespace in torch.serialization.get_safe_globals()\n"
            "from opd_dynamics.io.checkpoint import Checkpoint\n"
            "from opd_dynamics.errors import CheckpointError\n"
            f"try:\n    Checkpoint({str(d)!r}, allow_pickle=True)\nexcept CheckpointError as e:\n"
            "    print('refused:', e); sys.exit(0)\nsys.exit(1)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "argparse.Namespace" in r.stdout or "cannot load safely" in r.stdout


def test_dtensor_classes_are_what_torch_itself_allows():
    import torch.distributed.tensor as dt

    allowed = weights_only.dtensor_classes()
    assert dt.DTensor in allowed and dt.Shard in allowed and dt.Replicate in allowed
    assert all(isinstance(c, type) for c in allowed)


def test_clean_checkpoint_still_loads(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    torch.save({"w": torch.ones(2, 2)}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError):
        Checkpoint(d)  # pickles need --allow-pickle
    assert torch.equal(Checkpoint(d, allow_pickle=True).get_tensor("w"), torch.ones(2, 2))
