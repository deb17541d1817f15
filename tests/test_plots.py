"""Every figure renders from a small table, with the axes, labels and legend entries a reader needs."""
from __future__ import annotations

import matplotlib.pyplot as plt  # a core dependency: its absence is a failure, not a skip
import pandas as pd
import pytest

import opd_dynamics.plots as P
from opd_dynamics.errors import OPDError

RUNS = ["opd", "rl", "sft"]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    return [t.get_text() for lg in legends for t in lg.get_texts()]


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def assert_labelled(fig, *, x=True):
    """Every visible data panel has a y label (or shares one in its row) and, where asked, an x label."""
    axes = visible_axes(fig)
    assert axes
    assert any(ax.get_ylabel() for ax in axes)
    if x:
        assert any(ax.get_xlabel() for ax in axes)
    fig.canvas.draw()  # layout engine runs; raises on a broken figure


def test_table1_bars(long_table):
    fig = P.table1_bars(long_table)
    axes = visible_axes(fig)
    assert len(axes) == 4
    assert [ax.get_ylabel() for ax in axes][1] == r"$\sigma_1 / \|\Delta W\|_F$ (%)"
    assert legend_texts(fig) == RUNS
    assert len(axes[0].patches) == 3  # one bar per run
    assert_labelled(fig, x=False)


def test_runs_keep_their_colour_across_figures(long_table):
    colors = P.run_colors(["sft", "opd", "rl"])
    a = P.table1_bars(long_table, colors=colors)
    b = P.alignment_curves(long_table, colors=colors)
    bar_colors = [p.get_facecolor()[:3] for p in a.axes[0].patches]
    import matplotlib.colors as mc

    line_colors = {ln.get_label(): mc.to_rgb(ln.get_color()) for ln in b.axes[0].lines if ln.get_linestyle() != "--"}
    assert bar_colors == [mc.to_rgb(colors[r]) for r in ("sft", "opd", "rl")]
    assert line_colors == {r: mc.to_rgb(c) for r, c in colors.items()}
    assert colors["opd"] == "#0072B2" and colors["rl"] == "#D55E00" and colors["sft"] == "#009E73"


@pytest.mark.parametrize("x, xlabel", [("step", "training step"), ("progress", "training progress t / T (%)")])
def test_metric_vs_step(long_table, x, xlabel):
    fig = P.metric_vs_step(long_table, ["spectral_ratio", "effective_rank"], x=x)
    axes = visible_axes(fig)
    assert [ax.get_xlabel() for ax in axes] == [xlabel] * 2
    assert axes[1].get_ylabel() == "effective rank"
    assert legend_texts(fig) == RUNS
    assert [len(ln.get_xdata()) for ln in axes[0].lines] == [4, 4, 4]  # steps 1, 2, 4, 8
    assert_labelled(fig)


def test_alignment_curves_are_percentages(long_table):
    fig = P.alignment_curves(long_table)
    axes = visible_axes(fig)
    assert len(axes) == 2 and "locking" in axes[1].get_ylabel()
    assert axes[0].get_ylim() == (0, 105)
    final = [ln.get_ydata()[-1] for ln in axes[0].lines]
    assert final[:2] == pytest.approx([100, 100])  # ΔW_T is aligned with itself
    assert legend_texts(fig) == RUNS + ["chance level (k/d)"]


def test_alignment_curves_draw_the_chance_rows(long_table):
    """One grey dashed line at the mean chance level k/d when every run shares it; one per run when they differ."""
    from opd_dynamics.table import BODY_KINDS

    same = long_table[long_table.run != "sft"]  # opd and rl: one architecture, one chance level
    body = same[same.kind.isin(BODY_KINDS)]
    for ax, metric in zip(visible_axes(P.alignment_curves(same)), ("alignment_to_final", "subspace_locking")):
        dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
        want = 100 * body[body.metric == f"{metric}_chance"].value.mean()
        assert len(dashed) == 1 and dashed[0].get_ydata() == pytest.approx(want, rel=1e-9)
        assert 0 < want < 100
    differ = same.copy()
    differ.loc[(differ.metric == "alignment_to_final_chance") & (differ.run == "rl"), "value"] = 0.5
    ax = visible_axes(P.alignment_curves(differ, ["alignment_to_final"]))[0]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 2 and dashed[1].get_ydata() == pytest.approx(50.0)
    no_chance = same[~same.metric.str.endswith("_chance")]
    assert not [ln for ax in P.alignment_curves(no_chance).axes for ln in ax.lines if ln.get_linestyle() == "--"]


def test_layer_step_heatmap(long_table):
    fig = P.layer_step_heatmap(long_table, "relative_update", kinds=["attn_q", "mlp_down"])
    axes = visible_axes(fig)
    assert len(axes) == 6  # 3 runs × 2 kinds
    assert [ax.get_title() for ax in axes[:2]] == ["attn_q", "mlp_down"]
    assert axes[0].images[0].get_array().shape == (2, 4)  # 2 layers × 4 steps
    cbar = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert cbar and "W_0" in cbar[0].get_ylabel()
    assert_labelled(fig)


@pytest.mark.parametrize("by, entries", [("family", ["attention", "mlp"]),
                                         ("kind", ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up",
                                                   "mlp_down"])])
def test_layer_norm_bars(long_table, by, entries):
    fig = P.layer_norm_bars(long_table, by=by)
    axes = visible_axes(fig)
    assert len(axes) == 3 and axes[0].get_title() == "opd, step 8"
    assert legend_texts(fig) == entries
    assert len(axes[0].patches) == 2 * len(entries)  # 2 layers
    assert axes[-1].get_xlabel() == "layer (0-based)"


def test_layer_norm_bars_unknown_step(long_table):
    with pytest.raises(OPDError, match="no step 3"):
        P.layer_norm_bars(long_table, step=3)


def test_rank1_evr_bars(long_table):
    fig = P.rank1_evr_bars(long_table)
    axes = visible_axes(fig)
    assert [ax.get_title() for ax in axes] == ["EVR of PC1", "EVR of PC2"]
    assert axes[0].get_ylabel() == "explained variance ratio (%)"
    assert [t.get_text() for t in axes[0].get_xticklabels()][-1] == "all"
    assert legend_texts(fig) == RUNS


@pytest.mark.parametrize("side", ["left", "right"])
def test_principal_angles_by_kind(long_table, side):
    fig = P.principal_angles_by_kind(long_table, side=side)
    axes = visible_axes(fig)
    assert len(axes) == 2 and all(side in ax.get_title() for ax in axes)
    assert axes[0].get_yscale() == "log" and "°" in axes[0].get_ylabel()
    assert legend_texts(fig) == RUNS
    sft_bar = [p.get_height() for p in axes[0].containers[2]]
    rl_bar = [p.get_height() for p in axes[0].containers[1]]
    assert min(sft_bar) > 10 > 0.5 > max(rl_bar)  # Geometry of OPD ordering, as planted


def test_sparsity_by_kind(long_table):
    fig = P.sparsity_by_kind(long_table)
    ax = visible_axes(fig)[0]
    assert ax.get_ylim() == (0, 100) and ax.get_ylabel() == "entries unchanged in bf16 (%)"
    assert "checkpoint dtype" in ax.get_title() and "fp32" in ax.get_title()
    assert legend_texts(fig) == RUNS


@pytest.mark.parametrize("name, metric", [("rank1_evr_bars", "rank1_pca_evr"),
                                          ("principal_angles_by_kind", "principal_angles"),
                                          ("sparsity_by_kind", "sparsity_bf16"),
                                          ("table1_bars", "spectral_norm")])
def test_missing_metric_is_a_clear_error(long_table, name, metric):
    bare = long_table[long_table["metric"] == "frobenius"]
    if name == "table1_bars":
        bare = long_table[long_table["metric"] == "alignment_to_final"].head(0)
    with pytest.raises(P.PlotDataError, match="analyze with --metrics .*" + metric):
        P.ANALYSIS_FIGURES[name](bare)


def test_norm_scaling_and_partition(studies):
    fig = P.norm_scaling(studies)
    ax = fig.axes[0]
    assert "alpha" in ax.get_xlabel() and ax.get_ylabel() == "accuracy"
    assert legend_texts(fig) == ["opd", "rl"]
    fig = P.spectral_partition(studies)
    assert legend_texts(fig) == [f"{r} {v}" for r in ("opd", "rl") for v in ("top", "bottom", "top_rescaled")]
    assert fig.axes[0].get_xlabel() == "singular components kept (%)"
    sp = studies[studies.study == "spectral_partition"]
    by_rank = sp[sp.variant == "top"].assign(variant="top_rank_rescaled")  # the authors preset: a number kept
    fig = P.spectral_partition(pd.concat([sp[sp.variant.str.startswith("reference")], by_rank]))
    assert fig.axes[0].get_xlabel() == "singular components kept (number)"


def test_norm_scaling_against_update_norm(studies):
    frame = studies.assign(update_norm=studies["x"] * 3.0)
    fig = P.norm_scaling(frame)
    assert r"\|\alpha" in fig.axes[0].get_xlabel()
    assert max(fig.axes[0].lines[0].get_xdata()) == pytest.approx(3.0)


def test_early_rescale_draws_references(studies):
    fig = P.early_rescale(studies)
    assert "beta" in fig.axes[0].get_xlabel()
    assert "opd step 2 (25%)" in legend_texts(fig)


def test_sliding_window_over_norm_bars(studies, long_table):
    fig = P.sliding_window(studies, long_table)
    line_axes = [ax for ax in fig.axes if ax.lines]
    assert len(line_axes) == 2 and line_axes[0].get_title().startswith("opd")
    texts = legend_texts(fig)
    for entry in ("MLP window", "attention window", "base", "final", r"$\|\Delta W\|_F$ mlp"):
        assert entry in texts
    bar_axes = [ax for ax in fig.axes if ax.patches]
    assert len(bar_axes) == 2 and "bars" in bar_axes[0].get_ylabel()
    alone = P.sliding_window(studies, run="rl")
    assert len([ax for ax in alone.axes if ax.lines]) == 1


def test_effopd_accuracy_marks_accepted_steps(studies):
    fig = P.effopd_accuracy(studies)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training step"
    assert legend_texts(fig) == ["opd", "effopd", "teacher", "accepted extrapolation"]
    assert len(ax.collections[0].get_offsets()) == 3


def test_study_bars_and_missing_study(studies):
    fig = P.study_bars(studies, "embedding_revert")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["final", "reverted"]
    with pytest.raises(P.PlotDataError, match="no rows with study='nope'"):
        P.study_bars(studies, "nope")
    with pytest.raises(ValueError, match="lacks columns"):
        P.norm_scaling(studies.drop(columns="variant"))


@pytest.mark.slow  # 13 figures, each as PNG and PDF (PDF embeds fonts); the fast tier: test_report.py's layout test
def test_every_figure_saves_as_png_and_pdf(long_table, studies, tmp_path):
    figs = [f(long_table) for f in P.ANALYSIS_FIGURES.values()]
    figs += [P.sliding_window(studies, long_table)] + [f(studies) for k, f in P.STUDY_FIGURES.items()
                                                        if k != "sliding_window"]
    for i, fig in enumerate(figs):
        fig.savefig(tmp_path / f"{i}.png")
        assert (tmp_path / f"{i}.png").stat().st_size > 5000
        fig.savefig(tmp_path / f"{i}.pdf")
        assert (tmp_path / f"{i}.pdf").read_bytes()[:4] == b"%PDF"


def test_several_metrics_never_share_an_axis(studies):
    both = __import__("pandas").concat([studies, studies.assign(metric="loglik", value=-studies["value"])])
    with pytest.raises(P.PlotDataError, match="several metrics"):
        P.norm_scaling(both)
