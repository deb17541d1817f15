"""The one patch-and-restore context manager: bitwise restore on exit and after an exception, for its three users."""
from __future__ import annotations

import pytest
import torch

from opd_dynamics.effopd import search_model
from opd_dynamics.effopd.replay import replay
from opd_dynamics.patching import Patch, patched
from opd_dynamics.synthetic import tiny_llama


def _snapshot(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


def _bitwise(model, snap) -> bool:
    return all(torch.equal(t, snap[n]) and t.dtype == snap[n].dtype for n, t in model.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_writes_are_undone_bit_for_bit_on_exit(dtype):
    model = tiny_llama(seed=4).to(dtype)
    snap = _snapshot(model)
    params = dict(model.named_parameters())
    name = next(n for n in params if n.endswith("up_proj.weight"))
    with patched(params) as patch:
        # a float64 value that does not round-trip through the parameter dtype: restore must not recompute it
        patch.write(name, patch.original(name).double() * (1 + 1e-3) + 1e-9)
        patch.write(name, patch.original(name).double() * 3)  # a second write keeps the first original
        assert not torch.equal(params[name], snap[name]) and params[name].dtype == dtype
        assert patch.names == [name]
    assert _bitwise(model, snap) and patch.names == []


def test_an_exception_inside_the_block_still_restores():
    model = tiny_llama(seed=5)
    snap = _snapshot(model)
    params = dict(model.named_parameters())
    with pytest.raises(RuntimeError, match="boom"):
        with patched(params) as patch:
            for n in params:
                patch.write(n, torch.zeros_like(params[n]))
            raise RuntimeError("boom")
    assert _bitwise(model, snap)


def test_commit_keeps_the_edits_and_restore_empties_the_patch():
    lin = torch.nn.Linear(3, 2)
    before = lin.weight.detach().clone()
    with patched({"w": lin.weight}) as patch:
        patch.write("w", before + 1)
        patch.commit()
    assert torch.equal(lin.weight, before + 1)
    p = Patch({"w": lin.weight})
    p.write("w", torch.zeros(2, 3))
    p.restore()
    assert torch.equal(lin.weight, before + 1) and p.names == []
    p.restore()  # idempotent: nothing to undo
    assert torch.equal(lin.weight, before + 1)


def test_unknown_tensor_is_a_one_line_error():
    from opd_dynamics.errors import OPDError

    with pytest.raises(OPDError, match="no such tensor"):
        with patched({}) as patch:
            patch.write("nope", torch.zeros(1))


def test_effopd_search_restores_when_the_score_raises():
    model = tiny_llama(seed=6)
    snap = _snapshot(model)
    delta = {n: torch.full_like(p, 0.25) for n, p in model.named_parameters() if n.endswith("proj.weight")}
    calls = []

    def score(m):
        calls.append(1)
        if len(calls) == 3:  # mid-search, with the model at W + 4Δ
            raise RuntimeError("evaluator crashed")
        return float(len(calls))

    with pytest.raises(RuntimeError, match="evaluator crashed"):
        search_model(model, delta, score)
    assert _bitwise(model, snap)


def test_replay_gives_a_passed_model_back_unchanged_also_after_an_error(synthetic_runs):
    model = tiny_llama()
    snap = _snapshot(model)
    report = replay(synthetic_runs["opd"], lambda m: 0.0, base=synthetic_runs["base"], model=model, progress=False)
    assert len(report.summary) and _bitwise(model, snap)

    def failing(m, calls=[]):
        calls.append(1)
        if len(calls) > 4:
            raise RuntimeError("late failure")
        return 0.0

    with pytest.raises(RuntimeError, match="late failure"):
        replay(synthetic_runs["opd"], failing, base=synthetic_runs["base"], model=model, progress=False)
    assert _bitwise(model, snap)
    # restore=False leaves the model at the last checkpoint replayed (what the CLI's throw-away model does)
    replay(synthetic_runs["opd"], lambda m: 0.0, base=synthetic_runs["base"], model=model, progress=False,
           restore=False)
    assert not _bitwise(model, snap)
