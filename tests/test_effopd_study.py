"""``replay_run``: the EffOPD replay as a library command writing the long table + manifest like every command."""
from __future__ import annotations

import json
import math
import pandas as pd
import pytest
from cli_runner import run_cli

from opd_dynamics.effopd.frame import replay_frame
from opd_dynamics.effopd.replay import ReplayReport
from opd_dynamics.effopd.study import OUTPUT_FILES, TOOL, replay_run, replay_table
from opd_dynamics.errors import OPDError
from opd_dynamics.table import MANIFEST_NAME, load, load_manifest

ARGS = dict(task="lab:tiny", evaluator="loglik:split=train,limit=4", ks=(1, 2))


def _planted_report() -> ReplayReport:
    searches = pd.DataFrame({"step": [1, 1, 2, 2, 2], "ref_step": [0, 0, 1, 1, 1], "k": [0, 1, 0, 1, 2],
                             "multiplier": [0, 2, 0, 2, 4], "score": [0.1, 0.05, 0.2, 0.3, 0.25],
                             "accepted": [True, False, False, True, False]})
    summary = pd.DataFrame({"step": [1, 2], "accepted_k": [0, 1], "best_score": [0.1, 0.3], "plain_score": [0.1, 0.2],
                            "matched_step": [1.0, math.nan], "steps_saved": [0.0, math.nan],
                            "speedup": [1.0, math.nan]})
    return ReplayReport(searches, summary, pd.DataFrame({"step": [1, 2, 4], "score": [0.1, 0.2, 0.28]}))


def test_replay_table_rows_on_a_planted_report():
    df = replay_table(_planted_report(), run="opd", metric="acc")
    got = {(r.step, r.ref_step, r.module, r.metric): r.value for r in df.itertuples()}
    assert got[(4, 0, "plan:effopd/opd/4", "acc")] == 0.28
    assert got[(2, 1, "plan:effopd/candidate/4", "acc")] == 0.25
    assert got[(1, 0, "plan:effopd/candidate/2", "acc")] == 0.05
    assert got[(2, 1, "plan:effopd/effopd/2", "acc")] == 0.3 and got[(2, 1, "plan:effopd/effopd/2", "accepted_k")] == 1
    assert got[(1, 0, "plan:effopd/effopd/1", "speedup")] == 1.0 and math.isnan(got[(2, 1, "plan:effopd/effopd/2", "speedup")])
    assert len(df) == 3 + 5 + 2 * 5 and df["layer"].isna().all() and df["kind"].isna().all()


@pytest.fixture(scope="module")
def written(tmp_path_factory, tiny_llama_runs):
    runs = tiny_llama_runs
    out = tmp_path_factory.mktemp("effopd") / "out"
    report = replay_run(runs["run"], base=runs["base"], out=out, progress=False, **ARGS)
    return runs, out, report


def test_replay_run_writes_the_long_table_and_manifest(written):
    runs, out, report = written
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(OUTPUT_FILES)
    df = load(out)
    pd.testing.assert_frame_equal(df, report.table)
    # the long table holds the same numbers as the CSVs (exactly: both written from one report)
    searches, summary = pd.read_csv(out / "searches.csv"), pd.read_csv(out / "summary.csv")
    cands = df[df.module.str.startswith("plan:effopd/candidate/")]
    assert sorted(cands.value) == sorted(searches.score)
    ev = "loglik:limit=4,split=train"  # the evaluator's name: its spec
    best = df[df.module.str.startswith("plan:effopd/effopd/") & (df.metric == ev)].sort_values("step")
    assert best.value.tolist() == summary.best_score.tolist()
    acc = df[df.metric == "accepted_k"].sort_values("step")
    assert acc.value.tolist() == summary.accepted_k.astype(float).tolist()
    pd.testing.assert_frame_equal(pd.read_parquet(out / "studies.parquet"),
                                  replay_frame(report, run="run", metric=ev))
    man, old = load_manifest(out), json.loads((out / "replay.json").read_text())
    assert man["tool"] == old["tool"] == TOOL and "torch" in man["versions"] and man["created"]
    assert {k: v for k, v in man.items() if k not in ("created", "versions")} == old
    assert old["ks"] == [1, 2] and old["rule"] == ">=" and old["params"] == "weights" and old["preset"] == "paper"
    assert (out / MANIFEST_NAME).exists()


def test_cli_is_the_library(written, tmp_path):
    runs, out, _ = written
    cli_out = tmp_path / "cli"
    r = run_cli("effopd", "replay", runs["run"], "--base", runs["base"], "--task", "lab:tiny", "-e", ARGS["evaluator"],
                "--ks", "1, 2", "-q", "-o", cli_out)
    assert r.returncode == 0, r.stderr
    assert "cannot see how training would have continued" in r.stdout
    pd.testing.assert_frame_equal(load(cli_out), load(out))
    for name in ("searches.csv", "summary.csv"):
        assert (cli_out / name).read_text() == (out / name).read_text()


def test_bad_settings_fail_before_anything_is_read(tmp_path):
    with pytest.raises(OPDError, match="--rule '=>' not understood"):
        replay_run(tmp_path / "nowhere", rule="=>", out=tmp_path / "out")
    with pytest.raises(OPDError, match="preset 'x' unknown"):
        replay_run(tmp_path / "nowhere", preset="x")
    assert not (tmp_path / "out").exists()
