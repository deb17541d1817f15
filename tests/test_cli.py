"""The CLI as a user meets it: one-line errors, exit codes, nothing half-written.

Commands run in-process through the console script's ``main()`` (``tests/cli_runner.py``: the same exit status,
stdout and stderr, without 2–3 s of imports per call); ``run`` starts a real ``python -m`` process for the test
that checks what a shell sees."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from cli_runner import run_cli
from opd_dynamics.table import load

CLI = [sys.executable, "-m", "opd_dynamics_cli.app"]


def run(*args, cwd=None):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_analyze_writes_table_and_prints_summary(synthetic_runs, tmp_path):
    out = tmp_path / "res"
    r = run_cli("analyze", synthetic_runs["opd"], synthetic_runs["rl"], "--base", synthetic_runs["base"], "-o", out,
            "--metrics", "spectral_ratio,alignment_to_final:k=4,side=right", "--select", "kind=body")
    assert r.returncode == 0, r.stderr
    assert "EffOPD Table 1" in r.stdout and "opd" in r.stdout and "rl" in r.stdout
    df = load(out)
    assert set(df.metric) == {"spectral_ratio", "alignment_to_final", "alignment_to_final_chance"}
    assert set(df.run) == {"opd", "rl"}
    s = run_cli("show", out, "--final")
    assert s.returncode == 0 and "spectral_ratio" in s.stdout


def test_list_metrics_and_help_examples():
    r = run_cli("list-metrics")
    assert r.returncode == 0 and "effective_rank" in r.stdout and "EffOPD" in r.stdout
    h = run_cli("analyze", "--help")
    assert h.returncode == 0 and "Examples" in h.stdout


def _truncated(synthetic_runs, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(synthetic_runs["opd"], d)
    f = d / "checkpoint-4" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return d


@pytest.mark.parametrize("case", ["empty", "no_base", "truncated", "bad_metric", "pickle"])
def test_user_errors_are_one_line_without_traceback(case, synthetic_runs, tmp_path):
    _user_error(run_cli, case, synthetic_runs, tmp_path)


def test_a_user_error_in_a_real_process_is_one_line_and_exit_status_2(synthetic_runs, tmp_path):
    _user_error(run, "truncated", synthetic_runs, tmp_path)  # the shell's view: python -m, its own stderr


def _user_error(run, case, synthetic_runs, tmp_path):
    out = tmp_path / "out"
    if case == "empty":
        (tmp_path / "empty").mkdir()
        args = ["analyze", tmp_path / "empty", "--base", synthetic_runs["base"]]
        expect = "is empty"
    elif case == "no_base":
        args = ["analyze", synthetic_runs["opd"]]
        expect = "--base"
    elif case == "truncated":
        args = ["analyze", _truncated(synthetic_runs, tmp_path), "--base", synthetic_runs["base"]]
        expect = "checkpoint-4/model.safetensors: truncated"
    elif case == "bad_metric":
        args = ["analyze", synthetic_runs["opd"], "--base", synthetic_runs["base"], "-m", "spectral_nrom"]
        expect = "did you mean spectral_norm"
    else:
        import torch

        (tmp_path / "p").mkdir()
        torch.save({"w": torch.ones(2)}, tmp_path / "p" / "pytorch_model.bin")
        args = ["analyze", tmp_path / "p", "--base", synthetic_runs["base"]]
        expect = "--allow-pickle"
    r = run(*args, "-o", out, "-q")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert expect in lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_comma_lists_are_parsed_one_way():
    from opd_dynamics.errors import OPDError
    from opd_dynamics_cli.lists import comma_list

    assert comma_list(" 1, 2,,8 ", "--steps", int) == [1, 2, 8]
    assert comma_list("0,0.5", "--alphas", float) == [0.0, 0.5]
    assert comma_list("mlp,attn", "--families") == ["mlp", "attn"]
    assert comma_list(None, "--steps", int) is None and comma_list("", "--steps", int) is None
    with pytest.raises(OPDError, match=r"--steps '1,x': expected comma-separated integers"):
        comma_list("1,x", "--steps", int)
    with pytest.raises(OPDError, match=r"--centres '1.5': expected comma-separated integers"):
        comma_list("1.5", "--centres", int)  # no longer truncated to 1 through a float
