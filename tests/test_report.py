"""The report builds from analysis results (and study frames), opens offline, and is written atomically."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
from cli_runner import run_cli

from opd_dynamics.errors import OPDError
from opd_dynamics.report import build_report, load_inputs, to_latex
from opd_dynamics.table import save


@pytest.fixture(scope="module")
def results(long_table, studies, tmp_path_factory):
    """Two analysis results directories (opd+rl, sft) and a directory holding a study frame."""
    root = tmp_path_factory.mktemp("results")
    save(long_table[long_table["run"] != "sft"], root / "main", {"tool": "opd-dynamics analyze"})
    save(long_table[long_table["run"] == "sft"].reset_index(drop=True), root / "sft", {"tool": "opd-dynamics analyze"})
    # an intervention study's directory: raw scores as a long table (same run names) + the study frame
    raw = long_table[(long_table["run"] == "opd") & (long_table["metric"] == "frobenius")].reset_index(drop=True)
    save(raw, root / "studies", {"tool": "opd-dynamics interventions"})
    studies.to_parquet(root / "studies" / "studies.parquet")
    return root


@pytest.fixture(scope="module")
def few(long_table, tmp_path_factory):
    """A results directory with one run and two metrics: a quick report (four figures)."""
    d = tmp_path_factory.mktemp("few") / "sft"
    keep = (long_table["run"] == "sft") & long_table["metric"].isin(["frobenius", "spectral_norm"])
    save(long_table[keep].reset_index(drop=True), d, {})
    return d


#: every figure the full report draws: all eight analysis figures and one per study (``embedding_revert`` has no
#: figure of its own: bars)
FIGURES = ["table1", "metrics_vs_step", "alignment", "layer_step_heatmap", "layer_norms", "rank1_pca",
           "principal_angles", "sparsity_bf16", "study_sliding_window", "study_norm_scaling",
           "study_spectral_partition", "study_early_rescale", "study_embedding_revert", "study_effopd"]


@pytest.fixture(scope="module")
def one_figure(studies, tmp_path_factory):
    """A study frame that draws one figure (the embedding-revert bars): the cheapest report there is."""
    path = tmp_path_factory.mktemp("one") / "scores.csv"
    studies[studies["study"] == "embedding_revert"].to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def report(results, tmp_path_factory):
    """The full report, PNG only: half the cost of PNG + PDF (PDF font embedding). Every figure as PDF is
    ``tests/test_plots.py``'s ``test_every_figure_saves_as_png_and_pdf`` (slow); the report's formats loop is
    ``test_each_format_is_written_for_each_figure`` (one figure)."""
    out = tmp_path_factory.mktemp("rep") / "report"
    index = build_report([results / "main", results / "sft", results / "studies"], out, formats=("png",))
    return index


@pytest.fixture(scope="module")
def small_report(long_table, tmp_path_factory):
    """Three runs, Table 1's metrics only: four figures (the full report is ``report``, slow)."""
    d = tmp_path_factory.mktemp("small")
    keep = long_table["metric"].isin(["spectral_ratio", "effective_rank", "frobenius"])
    save(long_table[keep].reset_index(drop=True), d / "runs", {"tool": "opd-dynamics analyze"})
    return build_report([d / "runs"], d / "report", formats=("png",))


@pytest.mark.slow  # every figure of the full report (the fast tier builds small_report and one-figure reports)
def test_report_layout(report):
    out = report.parent
    meta = json.loads((out / "report.json").read_text())
    assert set(meta["colors"]) == {"opd", "rl", "sft"}
    assert meta["figures"] == FIGURES and meta["skipped"] == {}
    for slug in meta["figures"]:
        assert (out / "figures" / f"{slug}.png").stat().st_size > 5000
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(f"{slug}.png" for slug in FIGURES)
    for name in ("table1_final.csv", "table1_final.tex", "table1_all_steps.csv", "kind_means_final.csv",
                 "kind_means_final.tex", "studies.csv"):
        assert (out / "tables" / name).stat().st_size > 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".report")]  # no temp dir left
    kinds = {i["path"].rsplit("/", 2)[-2] + "/" + i["path"].rsplit("/", 1)[-1]: i["kind"] for i in meta["inputs"]}
    assert kinds["studies/metrics.parquet"].startswith("skipped (opd-dynamics interventions")
    assert kinds["studies/studies.parquet"] == "study"


def test_html_is_self_contained(small_report):
    report = small_report
    text = report.read_text()
    assert text.count("data:image/png;base64,") == len(json.loads((report.parent / "report.json").read_text())
                                                         ["figures"]) == 4
    assert not re.search(r"""(src|href)=['"](https?:)?//""", text)  # nothing fetched from the network
    assert "<script" not in text
    for run in ("opd", "rl", "sft"):
        assert f"<td>{run}</td>" in text  # runs side by side in Table 1


def test_latex_table_is_escaped_booktabs(small_report):
    tex = (small_report.parent / "tables" / "table1_final.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex
    assert r"spectral\_ratio" in tex and re.search(r"\d\\%", tex)
    assert to_latex(__import__("pandas").DataFrame({"run": ["a_b&c"]}), "50% of #1") .count(r"a\_b\&c") == 1


def test_each_format_is_written_for_each_figure(one_figure, tmp_path):
    index = build_report([one_figure], tmp_path / "rep", formats=("png", "pdf"))
    assert json.loads((index.parent / "report.json").read_text())["figures"] == ["study_embedding_revert"]
    figures = index.parent / "figures"
    assert sorted(p.name for p in figures.iterdir()) == ["study_embedding_revert.pdf", "study_embedding_revert.png"]
    assert (figures / "study_embedding_revert.png").stat().st_size > 5000
    assert (figures / "study_embedding_revert.pdf").read_bytes()[:4] == b"%PDF"


def test_missing_metrics_are_listed_not_fatal(few, tmp_path):
    index = build_report([few], tmp_path / "rep", formats=("png",))
    meta = json.loads((index.parent / "report.json").read_text())
    assert "table1" in meta["figures"] and "alignment" in meta["skipped"]
    assert "analyze with --metrics" in meta["skipped"]["alignment"]
    assert "Not drawn" in index.read_text()


def test_errors_leave_nothing_behind(results, tmp_path):
    with pytest.raises(OPDError, match="no analysis table or study frame"):
        build_report([tmp_path], tmp_path / "rep")
    copy = tmp_path.parent / f"{tmp_path.name}-copy"
    shutil.copytree(results / "main", copy)
    with pytest.raises(OPDError, match="run 'opd' is in both"):
        build_report([results / "main", copy], tmp_path / "rep2")
    with pytest.raises(OPDError, match="formats"):
        build_report([results / "main"], tmp_path / "rep3", formats=("gif",))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_rebuild_replaces_only_a_report(one_figure, tmp_path):
    out = tmp_path / "rep"
    build_report([one_figure], out, formats=("png",))
    (out / "stale.txt").write_text("old")
    build_report([one_figure], out, formats=("png",))
    assert not (out / "stale.txt").exists() and (out / "index.html").exists()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(OPDError, match="not an opd-dynamics report"):
        build_report([one_figure], other, formats=("png",))
    assert (other / "thesis.tex").read_text() == "keep me"


def test_failure_while_drawing_keeps_the_old_report(few, tmp_path, monkeypatch):
    out = tmp_path / "rep"
    build_report([few], out, formats=("png",))
    before = (out / "index.html").read_text()
    import opd_dynamics.plots as P

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(P, "table1_bars", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_report([few], out, formats=("png",))
    assert (out / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]


def test_load_inputs_prefers_parquet_over_its_csv_mirror(results, tmp_path):
    d = tmp_path / "r"
    shutil.copytree(results / "sft", d)
    import pandas as pd

    pd.read_parquet(d / "metrics.parquet").to_csv(d / "metrics.csv", index=False)
    inputs = load_inputs([d])
    assert [s["path"].rsplit("/", 1)[-1] for s in inputs.sources] == ["metrics.parquet"]


def test_cli_report(one_figure, tmp_path):
    out = tmp_path / "cli-rep"
    proc = run_cli("report", one_figure, "-o", out, "--formats", "png", "--title", "SFT only")
    assert proc.returncode == 0, proc.stderr
    assert "<title>SFT only</title>" in (out / "index.html").read_text()
    bad = run_cli("report", tmp_path / "nope", "-o", tmp_path / "x")
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "Traceback" not in bad.stderr


def _distinct_colours(png) -> int:
    from matplotlib.image import imread

    img = imread(png)
    flat = (img[..., :3] * 255).astype("uint8").reshape(-1, 3)
    return len({tuple(p) for p in flat[:: 7]})


@pytest.mark.slow
def test_headless_browser_screenshot(report, tmp_path):
    """The report renders in a real browser: the screenshot is full of figure colours, not a blank page."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("chromium not on PATH (CI installs it: apt-get install -y chromium)")
    shot = tmp_path / "shot.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    from matplotlib.image import imread

    img = imread(shot)
    assert img.shape[:2] == (2000, 1200)
    assert _distinct_colours(shot) > 200  # text, tables and several figures, not a blank or error page
    assert (img[..., :3] < 0.9).mean() > 0.05  # a good share of the page is not white


def test_study_only_report_draws_one_figure_per_metric(studies, tmp_path):
    import pandas as pd

    frame = studies[studies["study"].isin(["norm_scaling", "embedding_revert"])]
    both = pd.concat([frame, frame.assign(metric="loglik", value=-frame["value"])], ignore_index=True)
    both.to_csv(tmp_path / "scores.csv", index=False)
    index = build_report([tmp_path / "scores.csv"], tmp_path / "rep", formats=("png",))
    meta = json.loads((index.parent / "report.json").read_text())
    assert meta["figures"] == ["study_norm_scaling_accuracy", "study_norm_scaling_loglik",
                               "study_embedding_revert_accuracy", "study_embedding_revert_loglik"]


def test_a_study_csv_whose_variant_column_is_all_empty_loads_without_warnings(studies, tmp_path):
    """A frame of one study without variants (norm_scaling) round-trips through CSV as an all-NaN float column."""
    import warnings

    import pandas as pd

    from opd_dynamics.report.inputs import load_inputs

    frame = studies[studies["study"] == "norm_scaling"]
    assert len(frame) and (frame["variant"] == "").all()
    frame.to_csv(tmp_path / "scores.csv", index=False)
    assert pd.read_csv(tmp_path / "scores.csv")["variant"].isna().all()  # what the loader is handed
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = load_inputs([tmp_path / "scores.csv"]).studies
    assert len(got) == len(frame) and (got["variant"] == "").all() and got["variant"].dtype == "string"
