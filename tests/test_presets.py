"""The ``authors`` preset against the paper-text default, one test per row of docs/fidelity.md.

Each test plants an input where the two conventions give different, hand-computed numbers, and checks both.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compute, trajectory

from opd_dynamics.effopd import EffOPD, extrapolated_names
from opd_dynamics.errors import OPDError
from opd_dynamics.metrics.registry import Spec
from opd_dynamics.metrics.spectrum import top_count
from opd_dynamics.presets import PRESETS, check, metric_specs, parts, resolve, settings


def test_every_part_has_both_presets_and_unknown_names_are_one_line_errors():
    assert PRESETS == ("paper", "authors")
    for part in parts():
        assert settings(part, "paper") != settings(part, "authors"), part
    assert check(None) == "paper"
    with pytest.raises(OPDError, match="preset 'author' unknown"):
        check("author")


# --- EffOPD: acceptance rule ------------------------------------------------------------------------------------

def _tiny(seed=0):
    from opd_dynamics.synthetic import tiny_llama

    return tiny_llama(seed=seed)


@pytest.mark.parametrize("preset,accepted", [("paper", 5), ("authors", 0)])
def test_effopd_rule_ties_are_accepted_by_the_paper_and_rejected_by_the_authors(preset, accepted):
    """A flat score (every candidate ties W_t): ≥ walks to the last candidate k = 5, > keeps plain OPD."""
    model = _tiny()
    hook = EffOPD(lambda m: 0.5, model, preset=preset)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    r = hook.after_step(model, 1)
    assert (r.rule, r.accepted_k) == ({"paper": ">=", "authors": ">"}[preset], accepted)
    assert EffOPD(lambda m: 0.5, preset="authors", rule=">=").rule == ">="  # an explicit setting wins


# --- EffOPD: which parameters are extrapolated --------------------------------------------------------------------

def _names(config_cls, **kw):
    from transformers import AutoModelForCausalLM

    cfg = config_cls(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1, **kw)
    with torch.device("meta"):
        return [n for n, _ in AutoModelForCausalLM.from_config(cfg).named_parameters()]


def test_effopd_params_authors_name_match_takes_biases_qk_norms_post_attention_norm_and_router():
    from transformers import Qwen2Config, Qwen3Config, Qwen3MoeConfig

    qwen2 = _names(Qwen2Config)
    qwen3 = _names(Qwen3Config, head_dim=8)
    moe = _names(Qwen3MoeConfig, head_dim=8, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=8)
    short = lambda ns: sorted({n.split("layers.0.")[-1] for n in ns})  # noqa: E731
    # paper (default): the attention / MLP weight matrices only
    assert short(extrapolated_names(qwen2)) == ["mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                                                "self_attn.k_proj.weight", "self_attn.o_proj.weight",
                                                "self_attn.q_proj.weight", "self_attn.v_proj.weight"]
    authors2 = set(short(extrapolated_names(qwen2, params="authors")))
    assert authors2 - set(short(extrapolated_names(qwen2))) == {
        "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias", "post_attention_layernorm.weight"}
    authors3 = set(short(extrapolated_names(qwen3, params="authors")))
    assert {"self_attn.q_norm.weight", "self_attn.k_norm.weight"} <= authors3
    assert "self_attn.q_norm.weight" not in short(extrapolated_names(qwen3))
    assert "mlp.gate.weight" in short(extrapolated_names(moe, params="authors"))
    assert "mlp.gate.weight" not in short(extrapolated_names(moe))
    for ns in (qwen2, qwen3, moe):  # never: embeddings, lm_head, the final norm, input_layernorm
        assert not any(k in n for n in extrapolated_names(ns, params="authors")
                       for k in ("embed", "lm_head", "input_layernorm", "model.norm"))
    with pytest.raises(OPDError, match="params='all' not understood"):
        extrapolated_names(qwen2, params="all")


def test_effopd_preset_moves_a_bias_only_under_authors():
    """Online search with a score that rewards moving along Δ: under ``authors`` the bias moves by 2kΔ, else not."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    bias = "model.layers.0.self_attn.q_proj.bias"
    moved = {}
    for preset in ("paper", "authors"):
        model = AutoModelForCausalLM.from_config(cfg).float()
        start = dict(model.named_parameters())[bias].detach().clone()
        weight = "model.layers.0.self_attn.q_proj.weight"
        w0 = dict(model.named_parameters())[weight].detach().clone()
        hook = EffOPD(lambda m: float(dict(m.named_parameters())[weight].sum() - w0.sum()), model, preset=preset)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1e-2)
        r = hook.after_step(model, 1)
        assert r.accepted_k == 5
        moved[preset] = float((dict(model.named_parameters())[bias].detach() - start).mean())
    assert moved["paper"] == pytest.approx(1e-2, abs=1e-6)            # W_1 = W_0 + Δ: the bias is not extrapolated
    assert moved["authors"] == pytest.approx(11 * 1e-2, abs=1e-5)     # W_1 + 10Δ


def test_resolve_fills_only_what_is_not_given():
    assert resolve("effopd", "authors") == {"rule": ">", "params": "authors"}
    assert resolve("effopd", "authors", params="weights") == {"rule": ">", "params": "weights"}



# --- metrics -----------------------------------------------------------------------------------------------------

def _planted(sigma, m=None, n=None, seed=0):
    """W₀ = 0 and W_t = U diag(σ) Vᵀ with random orthonormal U, V (float64): ΔW has exactly the singular values σ."""
    rng = np.random.default_rng(seed)
    r = len(sigma)
    m, n = m or r, n or r
    u = np.linalg.qr(rng.standard_normal((m, r)))[0]
    v = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return np.zeros((m, n)), (u * np.asarray(sigma, dtype=np.float64)) @ v.T


def _preset_args(name, preset):
    (spec,) = metric_specs([Spec(name)], preset)
    return spec.args


def test_top1pct_ceil_keeps_two_of_rank_150_floor_keeps_one():
    """r = 150: ⌈1.5⌉ = 2 values (paper), ⌊1.5⌋ = 1 (authors). σ = 3, 2, then 148 × 0.5: Σσ² = 50."""
    w0, wt = _planted([3.0, 2.0] + [0.5] * 148, m=150, n=160)
    paper = compute("top1pct_ratio", w0, wt, **_preset_args("top1pct_ratio", "paper"))
    authors = compute("top1pct_ratio", w0, wt, **_preset_args("top1pct_ratio", "authors"))
    assert paper == pytest.approx(np.sqrt(13 / 50), rel=1e-6)
    assert authors == pytest.approx(np.sqrt(9 / 50), rel=1e-6)
    sv = np.linalg.svd(wt - w0, compute_uv=False)  # float64 oracle, straight from the definition
    assert authors == pytest.approx(np.sqrt((sv[:1] ** 2).sum() / (sv ** 2).sum()), rel=1e-6)
    assert (top_count(100), top_count(100, rounding="floor"), top_count(250, rounding="floor")) == (1, 1, 2)


def test_hill_alpha_on_sigma_and_on_lambda():
    """σ = e², e, 1 (k = 3): mean ln(σᵢ/σ₃) = 1.5 → α_σ = 2/3; on λ = σ² it is 3 → α_λ = 1 + 1/3."""
    w0, wt = _planted([np.e ** 2, np.e, 1.0])
    paper = compute("hill_alpha", w0, wt, k=3, **_preset_args("hill_alpha", "paper"))
    authors = compute("hill_alpha", w0, wt, k=3, **_preset_args("hill_alpha", "authors"))
    assert paper == pytest.approx(2 / 3, rel=1e-5)
    assert authors == pytest.approx(4 / 3, rel=1e-5)
    rng = np.random.default_rng(1)  # float64 oracle on a random update: the density exponent of λ = σ²
    d = rng.standard_normal((40, 30))
    lam = np.linalg.svd(d, compute_uv=False)[:10] ** 2
    want = 1 + 1 / (np.log(lam[:-1] / lam[-1]).sum() / 9)
    assert compute("hill_alpha", np.zeros_like(d), d, k=10, on="lambda") == pytest.approx(want, rel=1e-5)


def test_rank1_pca_standardized_gives_equal_variance_to_orthogonal_motions():
    """u₁(t) = (cos θ, sin θ, 0, …) for θ = −a, 0, a: centred, the two coordinates move orthogonally with variances
    2 sin²a and 2(1 − cos a)²/3. Unscaled PCA: EVR₁ = 2 sin²a / (2 sin²a + 2(1 − cos a)²/3); standardised: ½, ½."""
    a = 0.5
    v = np.zeros(6); v[0] = 1.0
    steps = {}
    for t, th in enumerate((-a, 0.0, a), start=1):
        u = np.zeros(8); u[0], u[1] = np.cos(th), np.sin(th)
        steps[t] = (1.0 + t) * np.outer(u, v)
    w0 = np.zeros((8, 6))
    paper = trajectory("rank1_pca_evr", w0, steps, rows=True, **_preset_args("rank1_pca_evr", "paper"))[3]
    authors = trajectory("rank1_pca_evr", w0, steps, rows=True, **_preset_args("rank1_pca_evr", "authors"))[3]
    big, small = 2 * np.sin(a) ** 2, 2 * (1 - np.cos(a)) ** 2 / 3
    assert paper["rank1_pca_evr1"] == pytest.approx(big / (big + small), abs=1e-5)
    assert paper["rank1_pca_evr2"] == pytest.approx(small / (big + small), abs=1e-5)
    assert authors["rank1_pca_evr1"] == pytest.approx(0.5, abs=1e-5)
    assert authors["rank1_pca_evr2"] == pytest.approx(0.5, abs=1e-5)


def test_bf16_sparsity_of_an_fp32_checkpoint_cast_first_or_as_stored():
    """An fp32 checkpoint whose entries move by 1e-5 relative (below bf16's ULP, 2⁻⁸ ≈ 3.9e-3) on half the entries:
    cast to bf16 first (paper, both presets) nothing changed; counted as stored, half the entries changed."""
    w0 = torch.linspace(0.5, 1.0, 64, dtype=torch.float32).reshape(8, 8)
    wt = w0.clone()
    wt[:4] *= 1 + 1e-5
    bf16 = compute("sparsity_bf16", w0, wt)
    stored = compute("sparsity_bf16", w0, wt, cast="stored")
    assert (bf16["sparsity_bf16"], bf16["sparsity_bf16_bits"]) == (1.0, 32.0)
    assert stored["sparsity_bf16"] == 0.5
    assert _preset_args("sparsity_bf16", "authors") == {}  # no released-code choice to copy: docs/fidelity.md


# --- Table 1 -----------------------------------------------------------------------------------------------------

def test_table1_mean_of_ratios_or_ratio_of_sums():
    """Two modules: σ₁/‖ΔW‖_F = 0.9 with ‖ΔW‖_F = 1 and 0.1 with ‖ΔW‖_F = 9. Mean of ratios 0.5; ratio of sums
    (0.9·1 + 0.1·9) / 10 = 0.18. Effective rank (not a share of ‖ΔW‖_F) is a plain mean either way."""
    from opd_dynamics.summary import table1
    from opd_dynamics.table import from_rows

    rows = []
    for mod, kind, ratio, frob, erank in (("model.layers.0.mlp.up_proj.weight", "mlp_up", 0.9, 1.0, 2.0),
                                          ("model.layers.0.self_attn.q_proj.weight", "attn_q", 0.1, 9.0, 6.0)):
        for metric_name, value in (("spectral_ratio", ratio), ("top1pct_ratio", ratio), ("frobenius", frob),
                                   ("effective_rank", erank)):
            rows.append(("opd", 4, 0, mod, 0, None, kind, metric_name, value))
    df = from_rows(rows)
    paper, authors = table1(df).iloc[0], table1(df, preset="authors").iloc[0]
    assert (paper["spectral_ratio"], paper["top1pct_ratio"]) == pytest.approx((0.5, 0.5))
    assert (authors["spectral_ratio"], authors["top1pct_ratio"]) == pytest.approx((0.18, 0.18))
    assert paper["effective_rank"] == authors["effective_rank"] == 4.0
    assert table1(df, preset="authors", aggregate="mean").iloc[0]["spectral_ratio"] == pytest.approx(0.5)
    with pytest.raises(OPDError, match="needs the frobenius metric"):
        table1(df[df.metric != "frobenius"], preset="authors")


def test_analyze_with_the_authors_preset_fills_unset_settings_and_records_the_preset(tmp_path):
    import json

    from opd_dynamics import analyze
    from opd_dynamics.synthetic import make_synthetic_runs

    runs = make_synthetic_runs(tmp_path / "runs", steps=(1, 2), kinds=("opd",), layers=1, hidden=16)
    metrics = ["hill_alpha:k=8", "top1pct_ratio:rounding=ceil"]
    got = {}
    for preset in ("paper", "authors"):
        df = analyze([runs["opd"]], base=runs["base"], metrics=metrics, select=["kind=mlp_up"], progress=False,
                     out=tmp_path / preset, preset=preset)
        got[preset] = df.set_index(["step", "metric"])["value"]
        settings_ = json.loads((tmp_path / preset / "manifest.json").read_text())
        assert settings_["settings"]["preset"] == preset
        assert {m["name"]: m["args"] for m in settings_["metrics"]}["top1pct_ratio"] == {"rounding": "ceil"}
    hill = got["paper"].xs("hill_alpha", level="metric")
    assert np.allclose(got["authors"].xs("hill_alpha", level="metric"), 1 + hill / 2, rtol=1e-9)
    # an explicit setting wins over the preset
    assert np.array_equal(got["authors"].xs("top1pct_ratio", level="metric"),
                          got["paper"].xs("top1pct_ratio", level="metric"))


def _two_module_run(root):
    """A run whose one checkpoint moves layer 0's matrices by a rank-1 update of norm 0.1 (σ₁/‖ΔW‖_F = 1) and layer
    1's by a dense random one of norm 1 (σ₁/‖ΔW‖_F well below 1): the mean of ratios and the ratio of sums differ."""
    import shutil

    from safetensors.torch import load_file, save_file

    from opd_dynamics.synthetic import make_synthetic_runs

    runs = make_synthetic_runs(root, steps=(1,), kinds=("opd",), layers=2, hidden=16)
    ck = runs["opd"] / "checkpoint-1"
    w = load_file(str(runs["base"] / "model.safetensors"))
    gen = torch.Generator().manual_seed(0)
    for name, t in w.items():
        if t.ndim == 2 and ("self_attn" in name or "mlp" in name):
            if ".layers.0." in name:
                d = torch.outer(torch.randn(t.shape[0], generator=gen), torch.randn(t.shape[1], generator=gen))
                w[name] = t + 0.1 * d / d.norm()
            else:
                d = torch.randn(t.shape, generator=gen)
                w[name] = t + d / d.norm()
    save_file(w, str(ck / "model.safetensors"))
    shutil.copy(runs["base"] / "config.json", ck / "config.json")
    return runs


def test_cli_analyze_records_the_preset_and_show_uses_it(tmp_path):
    """``analyze --preset authors`` prints Table 1 with σ₁/‖ΔW‖_F as a ratio of sums; ``show`` reads the preset back
    from the manifest, and ``show --preset paper`` prints the mean of ratios."""
    from cli_runner import run_cli as run

    from opd_dynamics.summary import table1
    from opd_dynamics.table import load

    runs = _two_module_run(tmp_path / "runs")
    out = tmp_path / "res"
    r = run("analyze", runs["opd"], "--base", runs["base"], "-m", "spectral_ratio,frobenius", "--preset", "authors",
            "-o", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    df = load(out)

    def printed(text):  # the spectral_ratio cell of the row of step 1
        line = [ln for ln in text.splitlines() if ln.split()[:2] == ["opd", "1"]][0]
        return float(line.split()[2].rstrip("%")) / 100

    want = {p: float(table1(df, preset=p).set_index("step").loc[1, "spectral_ratio"]) for p in PRESETS}
    assert want["paper"] - want["authors"] > 0.1  # the rank-1 modules weigh ½ in the mean, 1/11 in the ratio of sums
    assert printed(r.stdout) == pytest.approx(want["authors"], abs=6e-4)
    assert printed(run("show", out).stdout) == pytest.approx(want["authors"], abs=6e-4)
    assert printed(run("show", out, "--preset", "paper").stdout) == pytest.approx(want["paper"], abs=6e-4)
    from opd_dynamics.report import build_report  # the HTML report's Table 1 follows the recorded preset too

    build_report([out], tmp_path / "report", formats=("png",))
    t1 = pd.read_csv(tmp_path / "report" / "tables" / "table1_final.csv")
    assert float(t1["spectral_ratio"].iloc[0]) == pytest.approx(want["authors"], rel=1e-6)
    assert "authors preset" in (tmp_path / "report" / "index.html").read_text()


# --- spectral partition ------------------------------------------------------------------------------------------

def test_spectral_partition_authors_keeps_rank_one_rescaled_and_the_rest_at_w0(tiny_llama_runs):
    """Paper default: percent grid, modules outside attention/MLP at W_T. Authors: each body ΔW_T → its rank-1 part
    rescaled to ‖ΔW_T‖_F, everything else (norms, embeddings) at W₀."""
    from safetensors.torch import load_file

    from opd_dynamics.interventions import InterventionEngine
    from opd_dynamics.studies.spectral_partition import plans

    paths = tiny_llama_runs
    eng = InterventionEngine(paths["base"], cache_mb=0)
    run = eng.open_run(paths["run"], name="opd")
    w0 = {k: v.double() for k, v in load_file(str(paths["base"] / "model.safetensors")).items()}
    wt = {k: v.double() for k, v in load_file(str(paths["run"] / "checkpoint-4" / "model.safetensors")).items()}
    body, norm = "model.layers.1.mlp.down_proj.weight", "model.layers.1.post_attention_layernorm.weight"
    sel = ("kind=body",)
    authors = plans((), ("top",), True, sel, **resolve("spectral_partition", "authors"))
    paper = plans((50.0,), ("top",), False, sel, **resolve("spectral_partition", "paper"))
    assert [(p.variant, p.x) for p in authors] == [("top_rank_rescaled", 1.0)]
    with eng.applied(authors[0], run) as model:
        got = {k: v.detach().double() for k, v in model.state_dict().items()}
    d = wt[body] - w0[body]
    sv = torch.linalg.svdvals(got[body] - w0[body])
    assert sv[0] == pytest.approx(float(torch.linalg.matrix_norm(d)), rel=1e-5) and sv[1] < 1e-5 * sv[0]
    assert torch.equal(got[norm].float(), w0[norm].float())                    # the rest stays at W₀
    with eng.applied(paper[0], run) as model:
        got = {k: v.detach().double() for k, v in model.state_dict().items()}
    assert torch.allclose(got[norm], wt[norm], atol=1e-7)                        # the rest keeps ΔW_T
    r = int((torch.linalg.svdvals(d) > 1e-6).sum())
    sv = torch.linalg.svdvals(got[body] - w0[body])
    assert int((sv > 1e-5 * sv[0]).sum()) == -(-r // 2)                          # ⌈50 % of r⌉ components
    with pytest.raises(OPDError, match="whole numbers"):
        plans((), ("top",), True, sel, "base", ranks=(1.5,))


# --- token diagnostics -------------------------------------------------------------------------------------------

def _token_case():
    """Two positions, vocabulary 4, k = 2. Position 1: top-2 sets {0,1} (student) and {0,2} (teacher), ∩ = {0}.
    Position 2: disjoint top-2 sets, ∩ = ∅."""
    p = torch.tensor([[[0.5, 0.3, 0.15, 0.05], [0.6, 0.3, 0.06, 0.04]]], dtype=torch.float64)
    q = torch.tensor([[[0.4, 0.1, 0.3, 0.2], [0.05, 0.05, 0.5, 0.4]]], dtype=torch.float64)
    return p, q


def test_token_diagnostics_paper_and_thunlp_conventions():
    from opd_dynamics.diagnostics import token_diagnostics

    p, q = _token_case()
    mask = torch.ones(1, 2)
    paper = token_diagnostics(p.log(), q.log(), mask, k=2)
    authors = token_diagnostics(p.log(), q.log(), mask, k=2, preset="authors")
    # overlap mass: paper averages over both positions, thunlp over the one with a non-empty ∩
    assert paper["overlap_mass_student"] == pytest.approx((0.5 + 0.0) / 2)
    assert authors["overlap_mass_student"] == pytest.approx(0.5)
    assert authors["overlap_mass_teacher"] == pytest.approx(0.4)
    # overlap advantage: paper renormalises p and q on ∩ = {0}: p̄ = q̄ = 1, so 0; thunlp: one entry,
    # w = 0.5 / (0.5 + 0.3) with the raw log-ratio ln(0.4 / 0.5)
    assert paper["overlap_advantage"] == pytest.approx(0.0, abs=1e-15)
    assert authors["overlap_advantage"] == pytest.approx(0.5 / 0.8 * np.log(0.4 / 0.5), rel=1e-12)
    for key in ("overlap_ratio", "entropy_gap"):  # the rest is the same under both
        assert paper[key] == pytest.approx(authors[key], rel=1e-12)


def test_every_row_of_docs_fidelity_names_a_test_that_exists():
    """docs/fidelity.md: each table row names at least one test, and every named test is defined."""
    import ast
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "docs" / "fidelity.md").read_text().split("## Where the preset applies")[0]
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith(("| item", "|---"))]
    assert len(rows) >= len(parts())
    defined: dict[str, set[str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`|`::(\w+)`", cells[-1])
        assert named, row
        current = None
        for path, name, more in named:
            current = path or current
            if current not in defined:
                tree = ast.parse((root / current).read_text())
                defined[current] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
            assert (name or more) in defined[current], (current, name or more)


def test_token_diagnostics_callback_passes_the_preset_on():
    from opd_dynamics.callbacks.tokens import TokenDiagnosticsCallback
    from opd_dynamics.diagnostics import token_diagnostics
    from opd_dynamics.synthetic import tiny_llama

    student, teacher = tiny_llama(seed=1).eval(), tiny_llama(seed=2).eval()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        s, t = student(input_ids=ids).logits, teacher(input_ids=ids).logits
    for preset in PRESETS:
        got = TokenDiagnosticsCallback(probe, teacher=teacher, preset=preset).measure(student, 1)
        want = token_diagnostics(s, t, torch.ones_like(ids), preset=preset)
        assert got["tokens/overlap_advantage"] == pytest.approx(want["overlap_advantage"], rel=1e-9)
    paper, authors = (token_diagnostics(s, t, torch.ones_like(ids), preset=p)["overlap_advantage"] for p in PRESETS)
    assert abs(paper - authors) > 1e-4
    with pytest.raises(OPDError, match="unknown"):
        TokenDiagnosticsCallback(probe, teacher=teacher, preset="thunlp")


def test_reference_trainer_evaluator_passes_the_preset_on():
    from opd_dynamics.lab.evaluation import Evaluator
    from opd_dynamics.lab.models import ModelSpec, build_model
    from opd_dynamics.lab.reference import make_task
    from opd_dynamics.lab.tokenizer import char_tokenizer

    tok, task = char_tokenizer(), make_task("tiny")
    spec = ModelSpec(hidden=16, layers=1, heads=2, intermediate=32, max_positions=64, tie_embeddings=False)
    student, teacher = build_model(spec, tok, seed=0).eval(), build_model(spec, tok, seed=1).eval()
    examples = task.examples("validation")[:2]
    logs = {p: Evaluator(tok, task, examples, teacher=teacher, diagnostic_prompts=2, preset=p)(student)
            for p in PRESETS}
    assert logs["paper"]["overlap_ratio"] == pytest.approx(logs["authors"]["overlap_ratio"], rel=1e-12)
    assert abs(logs["paper"]["overlap_advantage"] - logs["authors"]["overlap_advantage"]) > 1e-6
