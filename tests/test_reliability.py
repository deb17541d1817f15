"""Every user mistake in every command, judged alike: stderr is one ``error:`` line, exit status 2, and nothing is
created or changed at ``-o`` (nor beside it). Plus the output guarantees a user sees from the CLI.

Each user-error case is a real subprocess (``tests/test_cli.py``'s ``run``), and so is the second writer (another
process holds the claim); the guarantees of a successful run are checked in-process (``tests/cli_runner.py``: the
same ``main()``, exit status and streams). ``docs/guarantees.md`` names the case that holds each promise.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from cli_runner import run_cli

from opd_dynamics import analyze
from opd_dynamics.outdir import claim
from opd_dynamics.table import load
from shards import reshard
from test_cli import CLI, _truncated, run


def _snapshot(path):
    """What is at ``path`` (and beside it): None when absent, else every file's bytes hash and mode."""
    if not path.exists() and not path.is_symlink():
        state = None
    elif path.is_file():
        state = (hashlib.sha1(path.read_bytes()).hexdigest(), path.stat().st_mode)
    else:
        state = {str(p.relative_to(path)): (hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                            p.stat().st_mode) for p in sorted(path.rglob("*"))}
    return state, sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else None


def judge(r, out, before, expect: str) -> None:
    """The one judge: one ``error:`` line naming the problem, exit 2, no traceback, ``-o`` untouched."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    assert "(fix: " in lines[0], lines[0]  # every error says how to fix it
    assert expect in lines[0], lines[0]
    assert _snapshot(out) == before


@pytest.fixture(scope="module")
def results(synthetic_runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "res"
    analyze([synthetic_runs["opd"]], base=synthetic_runs["base"], metrics=["spectral_norm"], out=out, progress=False)
    return out


def _copy_run(synthetic_runs, tmp_path, name="run"):
    d = tmp_path / name
    shutil.copytree(synthetic_runs["opd"], d)
    return d


def _copy_base(synthetic_runs, tmp_path):
    d = tmp_path / "base"
    shutil.copytree(synthetic_runs["base"], d)
    return d


# Each case: (tmp_path, synthetic_runs, results) -> (argv, out, expected text in the error line). The out path is
# prepared (absent, a file, a directory) by the case; the judge checks it is left exactly as it was.
def case_analyze_dangling_step(tmp, runs, res):
    d = _copy_run(runs, tmp)
    (d / "checkpoint-16").symlink_to(tmp / "unmounted" / "checkpoint-16")
    return ["analyze", d, "--base", runs["base"]], tmp / "out", "checkpoint-16: a dangling symlink"


def case_analyze_overlapping_offsets(tmp, runs, res):
    d = _copy_run(runs, tmp)
    f = d / "checkpoint-4" / "model.safetensors"
    blob = f.read_bytes()
    n = struct.unpack("<Q", blob[:8])[0]
    header = json.loads(blob[8:8 + n])
    k = "model.layers.0.self_attn.k_proj.weight"
    header[k.replace("k_proj", "v_proj")]["data_offsets"] = header[k]["data_offsets"]  # v_proj reads k_proj's bytes
    h = json.dumps(header).encode()
    f.write_bytes(struct.pack("<Q", len(h)) + h + blob[8 + n:])
    return ["analyze", d, "--base", runs["base"]], tmp / "out", "checkpoint-4/model.safetensors: corrupt safetensors"


def case_analyze_config_not_utf8(tmp, runs, res):
    base = _copy_base(runs, tmp)
    (base / "config.json").write_bytes(b'{"model_type": "llama", "name": "caf\xe9"}')
    return ["analyze", runs["opd"], "--base", base], tmp / "out", "config.json: not valid UTF-8"


def case_analyze_step_missing_a_shard(tmp, runs, res):
    # (an incomplete *newest* checkpoint is left out with a warning: tests/test_watch.py)
    d = _copy_run(runs, tmp)
    src = tmp / "single"
    shutil.move(d / "checkpoint-4", src)
    reshard(src, d / "checkpoint-4", n_shards=3)
    next((d / "checkpoint-4").glob("model-00003-*.safetensors")).unlink()
    return ["analyze", d, "--base", runs["base"]], tmp / "out", "leave step 4 out with --steps 1,2,8"


def case_analyze_out_is_a_file(tmp, runs, res):
    (tmp / "out").write_text("my notes")
    # a run that would fail only after reading: -o must be refused first
    return ["analyze", _truncated(runs, tmp), "--base", runs["base"]], tmp / "out", "exists and is not a directory"


def case_analyze_out_under_a_file(tmp, runs, res):
    (tmp / "notes").write_text("my notes")
    return ["analyze", runs["opd"], "--base", runs["base"]], tmp / "notes" / "out", "is a file, cannot create"


def case_analyze_out_holds_other_files(tmp, runs, res):
    (tmp / "out").mkdir()
    (tmp / "out" / "thesis.tex").write_text("keep me")
    return ["analyze", runs["opd"], "--base", runs["base"]], tmp / "out", "not an opd-dynamics report or result"


def case_analyze_invalid_metric_setting(tmp, runs, res):
    return (["analyze", runs["opd"], "--base", runs["base"], "-m", "alignment_to_final:mode=diagonal"], tmp / "out",
            "setting mode='diagonal': expected one of 'paired', 'subspace'")


def case_analyze_malformed_metric_setting(tmp, runs, res):
    return (["analyze", runs["opd"], "--base", runs["base"], "-m", "alignment_to_final:k=20;mode=subspace"],
            tmp / "out", "setting k='20;mode=subspace': expected an integer")


def case_analyze_setting_without_a_metric(tmp, runs, res):
    return (["analyze", runs["opd"], "--base", runs["base"], "-m", "frobenius,k=3"], tmp / "out",
            "setting 'k=3' comes after 'frobenius'")


def case_interventions_invalid_evaluator_setting(tmp, runs, res):
    return (["interventions", "norm-scaling", runs["opd"], "--base", runs["base"], "--task", "lab:tiny",
             "-e", "accuracy:split=holdout"], tmp / "out", "setting split='holdout': expected one of 'train'")


def case_analyze_unknown_option(tmp, runs, res):
    return ["analyze", runs["opd"], "--base", runs["base"], "--bogus"], tmp / "out", "No such option: --bogus"


def case_show_unreadable_table(tmp, runs, res):
    (tmp / "out").mkdir()
    (tmp / "out" / "metrics.parquet").write_bytes(b"not parquet at all")
    return ["show", tmp / "out"], tmp / "out", "not a readable results table"


def case_report_out_is_a_file(tmp, runs, res):
    (tmp / "out").write_text("x")
    return ["report", res], tmp / "out", "exists and is not a directory"


def case_report_out_is_its_input(tmp, runs, res):
    return ["report", res], res, "the report would replace its own data"


def case_report_missing_input(tmp, runs, res):
    return ["report", tmp / "nope"], tmp / "out", "no such file or directory"


def case_interventions_out_is_a_file(tmp, runs, res):
    (tmp / "out").write_text("x")
    return (["interventions", "norm-scaling", runs["opd"], "--base", runs["base"], "--task", "lab:tiny"],
            tmp / "out", "exists and is not a directory")


def case_effopd_out_is_a_file(tmp, runs, res):
    (tmp / "out").write_text("x")
    return (["effopd", "replay", runs["opd"], "--base", runs["base"], "--task", "lab:tiny"], tmp / "out",
            "exists and is not a directory")


def case_effopd_bad_rule(tmp, runs, res):
    return (["effopd", "replay", runs["opd"], "--base", runs["base"], "--task", "lab:tiny", "--rule", "=>"],
            tmp / "out", "--rule '=>' not understood")


def case_analyze_bad_preset(tmp, runs, res):
    return ["analyze", runs["opd"], "--base", runs["base"], "--preset", "authorz"], tmp / "out", "preset 'authorz' unknown"


def case_show_bad_preset(tmp, runs, res):
    return ["show", res, "--preset", "x"], tmp / "out", "preset 'x' unknown"


def case_spectral_partition_fractional_rank(tmp, runs, res):
    return (["interventions", "spectral-partition", runs["opd"], "--base", runs["base"], "--task", "lab:tiny",
             "--ranks", "1.5"], tmp / "out", "ranks=[1.5]: expected whole numbers")


def case_effopd_bad_preset(tmp, runs, res):
    return (["effopd", "replay", runs["opd"], "--base", runs["base"], "--task", "lab:tiny", "--preset", "author"],
            tmp / "out", "preset 'author' unknown")


def case_effopd_bad_params(tmp, runs, res):
    return (["effopd", "replay", runs["opd"], "--base", runs["base"], "--task", "lab:tiny", "--params", "all"],
            tmp / "out", "params='all' not understood")


def case_replay_manifest_not_utf8(tmp, runs, res):
    (tmp / "study").mkdir()
    (tmp / "study" / "manifest.json").write_bytes(b'{"tool": "\xff"}')
    return ["replay", tmp / "study" / "manifest.json"], tmp / "out", "manifest.json: not valid UTF-8"


def case_demo_out_is_a_file(tmp, runs, res):
    (tmp / "out").write_text("x")
    return ["demo", tmp / "out", "--preset", "tiny"], tmp / "out", "is a file, cannot create"


def case_list_metrics_extra_argument(tmp, runs, res):
    return ["list-metrics", "extra"], tmp / "out", "unexpected extra argument"


CASES = {name.removeprefix("case_"): fn for name, fn in dict(globals()).items() if name.startswith("case_")}
NO_OUT_FLAG = {"show_unreadable_table", "show_bad_preset", "demo_out_is_a_file", "list_metrics_extra_argument"}


@pytest.fixture(scope="module")
def outcomes(synthetic_runs, results, tmp_path_factory):
    """Every case prepared, then run as CLI subprocesses side by side (each pays the CLI's start-up alone)."""
    prepared = {}
    for name, fn in CASES.items():
        argv, out, expect = fn(tmp_path_factory.mktemp(name), synthetic_runs, results)
        prepared[name] = ([*argv, *([] if name in NO_OUT_FLAG else ["-o", out])], out, expect, _snapshot(out))
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        done = {name: pool.submit(run, *p[0]) for name, p in prepared.items()}
        return {name: (fut.result(), *prepared[name][1:]) for name, fut in done.items()}


@pytest.mark.slow  # every case is a CLI process of its own (tests/test_cli.py keeps a fast sample)
@pytest.mark.parametrize("case", sorted(CASES))
def test_user_error_is_one_line_and_touches_nothing(case, outcomes):
    r, out, expect, before = outcomes[case]
    judge(r, out, before, expect)


def test_second_writer_to_one_out_is_refused(synthetic_runs, tmp_path):
    out = tmp_path / "out"
    with claim(out):
        before = _snapshot(out)
        r = run("analyze", synthetic_runs["opd"], "--base", synthetic_runs["base"], "-o", out, "-q")
        judge(r, out, before, f"another opd-dynamics process (pid {os.getpid()}) is writing there")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads and writes anywhere")
def test_unreadable_step_and_read_only_out(synthetic_runs, tmp_path):
    d = _copy_run(synthetic_runs, tmp_path)
    (d / "checkpoint-4").chmod(0)
    try:
        r = run("analyze", d, "--base", synthetic_runs["base"], "-o", tmp_path / "out", "-q")
        judge(r, tmp_path / "out", (None, sorted(p.name for p in tmp_path.iterdir())), "checkpoint-4: permission denied")
    finally:
        (d / "checkpoint-4").chmod(0o755)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    r = run("analyze", synthetic_runs["opd"], "--base", synthetic_runs["base"], "-o", ro / "out", "-q")
    judge(r, ro / "out", (None, []), "not writable")


def test_rerun_replaces_result_whole_with_umask_modes_and_a_named_run(synthetic_runs, tmp_path):
    run_dir = _copy_run(synthetic_runs, tmp_path, "my-run")
    out = tmp_path / "out"
    args = ["analyze", ".", "--base", synthetic_runs["base"], "-m", "spectral_norm", "-o", out, "-q"]

    def cli(*extra):
        umask = os.umask(0o022)
        try:
            return run_cli(*args, *extra, cwd=run_dir)
        finally:
            os.umask(umask)

    r = cli("--csv")
    assert r.returncode == 0, r.stderr
    assert (out / "metrics.csv").exists()
    assert set(load(out).run) == {"my-run"}  # `analyze .` is named after the directory, never ''
    r = cli()
    assert r.returncode == 0, r.stderr
    assert not (out / "metrics.csv").exists()  # a rerun without --csv leaves no stale table
    for p in out.rglob("*"):  # teammates can read results on a shared filesystem
        assert p.stat().st_mode & 0o777 == (0o755 if p.is_dir() else 0o644), p
    assert out.stat().st_mode & 0o777 == 0o755
    assert json.loads((out / "manifest.json").read_text())["settings"]["rows"] == len(load(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my-run", "out"]  # no temp or lock left beside -o


def test_one_metric_twice_with_different_settings_is_named_apart(synthetic_runs, tmp_path):
    out = tmp_path / "out"
    r = run_cli("analyze", synthetic_runs["opd"], "--base", synthetic_runs["base"], "-o", out, "-q",
                "-m", "spectral_norm,alignment_to_final:k=4", "--metric", "alignment_to_final:k=4,mode=paired",
                "-m", "alignment_to_final:k=4,mode=subspace")  # an exact repeat (subspace is the default) is dropped
    assert r.returncode == 0, r.stderr
    df = load(out)
    # each carries its settings that differ from the defaults (k=20, mode=subspace); each chance row with them
    assert set(df.metric) == {"spectral_norm", "alignment_to_final[k=4]", "alignment_to_final[k=4,mode=paired]",
                              "alignment_to_final_chance[k=4]", "alignment_to_final_chance[k=4,mode=paired]"}
    a = df[df.metric.str.startswith("alignment_to_final[")].pivot_table(index=["module", "step"], columns="metric",
                                                                          values="value")
    assert len(a.columns) == 2 and not a.iloc[:, 0].equals(a.iloc[:, 1])  # two different measurements


def test_public_analyze_is_the_function_whatever_the_import_order():
    """Importing the submodule first (as demo and studies do) must not turn ``opd_dynamics.analyze`` into a module."""
    code = ("import types; from opd_dynamics.analyze import open_runs; import opd_dynamics.demo; "
            "from opd_dynamics import analyze; assert not isinstance(analyze, types.ModuleType), analyze")
    r = subprocess.run([CLI[0], "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
