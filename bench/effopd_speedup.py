"""Plain OPD vs EffOPD on the reference task: accuracy vs step and vs wall-clock, steps to 90 %/95 %, speedup.

For each seed: build (or reuse) the reference teacher and W₀, then train the same OPD arm twice from W₀ with the
same budget — plain, and with the online EffOPD search as a step hook (validation set for the search: 50 training
examples, greedy verifier accuracy, as in the paper). Validation accuracy is logged at the arm's checkpoint steps
(every power of two and every `save_every`). Wall-clock includes the search's evaluations. The same is done for the
RL (GRPO) arm, where the paper expects less gain.

Usage: python bench/effopd_speedup.py [--preset default] [--seeds 0 1 2] [--out /tmp/effopd-bench] [--arms opd rl]
Writes OUT/speedup.json, OUT/curves.csv and OUT/accuracy_vs_step.png; prints the Markdown table for docs/effopd.md.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import pandas as pd

from opd_dynamics.effopd.speedup import first_reaching




def search_score(kind: str, task, tok, probe):
    """The search's validation score on 50 training examples: greedy accuracy (paper) or token log-likelihood."""
    from opd_dynamics.evaluators import EvalContext, EvalSpec
    from opd_dynamics.lab import accuracy

    if kind == "accuracy":
        return lambda m: accuracy(m, tok, task, probe)
    return EvalSpec.parse(f"loglik:split=train,limit={len(probe)}").build(EvalContext(task, tok, progress=False))


def one(arm: str, effopd: bool, refs, preset: str, seed: int, score_kind: str = "accuracy") -> dict:
    from opd_dynamics.effopd import EffOPD
    from opd_dynamics.lab import accuracy
    from opd_dynamics.lab.arms import run_arm
    from opd_dynamics.lab.models import load_model
    from opd_dynamics.lab.reference import make_task
    from opd_dynamics.lab.tokenizer import load_tokenizer

    task = make_task(preset, seed)
    tok = load_tokenizer(refs.base)
    base, teacher = load_model(refs.base), load_model(refs.teacher).eval()
    probe = task.examples("train")[:50]
    clock: dict[int, float] = {}
    hooks = []
    search = None
    if effopd:
        search = EffOPD(search_score(score_kind, task, tok, probe), base)
        hooks.append(search)
    hooks.append(lambda model, step, log: clock.__setitem__(step, time.perf_counter()))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        _model, history = run_arm(arm, base, teacher, tok, task, preset, Path(d) / "run", seed,
                                  step_hooks=hooks, progress=False)
    total = time.perf_counter() - t0
    curve = [(h["step"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]
    return {"arm": arm, "effopd": effopd, "seed": seed, "curve": curve, "wall": total,
            "clock": {s: c - t0 for s, c in clock.items()},
            "searches": [r.to_json() for r in (search.history if search else [])]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="default")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=["opd", "rl"])
    ap.add_argument("--rl-seeds", type=int, nargs="*", default=None,
                    help="seeds on which to run the rl arm too (default: every seed)")
    ap.add_argument("--out", default="/tmp/effopd-bench")
    ap.add_argument("--score", choices=("accuracy", "loglik"), default="accuracy",
                    help="the search's validation score on 50 training examples")
    ap.add_argument("--from-json", nargs="*", default=None,
                    help="summarise earlier runs' speedup.json files (e.g. one process per seed) instead of training")
    a = ap.parse_args()
    from opd_dynamics.lab import build_reference_runs

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if a.from_json is not None:
        for f in a.from_json:
            results += json.loads(Path(f).read_text())
        for r in results:
            r["clock"] = {int(k): v for k, v in r["clock"].items()}
        a.seeds = sorted({r["seed"] for r in results})
        a.arms = sorted({r["arm"] for r in results})
    for seed in a.seeds if a.from_json is None else []:
        refs = build_reference_runs(out / f"lab-{seed}", preset=a.preset, seed=seed, progress=False)
        for arm in a.arms:
            if arm == "rl" and a.rl_seeds is not None and seed not in a.rl_seeds:
                continue
            for eff in (False, True):
                r = one(arm, eff, refs, a.preset, seed, a.score)
                print(f"seed {seed} {arm} effopd={eff}: final acc {r['curve'][-1][1]:.3f} in {r['wall']:.0f}s; "
                      f"accepted k {[s['accepted_k'] for s in r['searches']]}", flush=True)
                results.append(r)
    (out / "speedup.json").write_text(json.dumps(results, indent=1))
    rows = []
    for seed in a.seeds:
        for arm in a.arms:
            if not any(r["seed"] == seed and r["arm"] == arm for r in results):
                continue
            plain = next(r for r in results if r["seed"] == seed and r["arm"] == arm and not r["effopd"])
            eff = next(r for r in results if r["seed"] == seed and r["arm"] == arm and r["effopd"])
            final = plain["curve"][-1][1]
            row = {"arm": arm, "seed": seed, "plain_final": final, "effopd_final": eff["curve"][-1][1]}
            for frac in (0.9, 0.95):
                sp, se = first_reaching(plain["curve"], frac * final), first_reaching(eff["curve"], frac * final)
                row[f"steps{int(frac * 100)}_plain"], row[f"steps{int(frac * 100)}_effopd"] = sp, se
                row[f"speedup{int(frac * 100)}"] = sp / se if se and not math.isnan(se) else math.nan
                tp = plain["clock"].get(sp, math.nan) if not math.isnan(sp) else math.nan
                te = eff["clock"].get(se, math.nan) if not math.isnan(se) else math.nan
                row[f"wall_speedup{int(frac * 100)}"] = tp / te if te and not math.isnan(te) else math.nan
            rows.append(row)
    df = pd.DataFrame(rows)
    df.to_csv(out / "speedup.csv", index=False)
    curves = pd.DataFrame([{"arm": r["arm"], "effopd": r["effopd"], "seed": r["seed"], "step": s, "accuracy": acc,
                            "wall": r["clock"].get(s, math.nan)} for r in results for s, acc in r["curve"]])
    curves.to_csv(out / "curves.csv", index=False)
    print(df.to_markdown(index=False) if hasattr(df, "to_markdown") else df.to_string(index=False))
    for arm in a.arms:
        sub = df[df.arm == arm]
        for frac in (90, 95):
            v = sub[f"speedup{frac}"]
            print(f"{arm}: step speedup to {frac}% of plain final: median {v.median():.2f}, "
                  f"range {v.min():.2f}-{v.max():.2f} over seeds {sub.seed.tolist()}")
    plot(curves, out / "accuracy_vs_step.png", results)


def plot(curves: pd.DataFrame, path: Path, results: list[dict] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted(curves.arm.unique())
    fig, axes = plt.subplots(1, len(arms), figsize=(7.5 * len(arms), 3.8), squeeze=False)
    colours = {False: "#0072B2", True: "#D55E00"}
    styles = ["-", "--", ":", "-."]
    for ax, arm in zip(axes[0], arms):
        seeds = sorted(curves[curves.arm == arm].seed.unique())
        for eff in (False, True):
            for i, seed in enumerate(seeds):
                g = curves[(curves.arm == arm) & (curves.effopd == eff) & (curves.seed == seed)]
                ax.plot(g.step, g.accuracy, color=colours[eff], ls=styles[i % 4], marker="o", ms=2.5, lw=1.4,
                        label=f"{'EffOPD' if eff else 'plain ' + arm.upper()}, seed {seed}")
        for r in results or []:
            if r["arm"] == arm and r["effopd"]:
                acc = dict((s, a) for s, a in r["curve"])
                hits = [s["step"] for s in r["searches"] if s["accepted_k"] > 0 and s["step"] in acc]
                ax.scatter(hits, [acc[h] for h in hits], marker="*", s=90, color=colours[True], edgecolor="black",
                           linewidth=0.5, zorder=5, label="accepted extrapolation" if r["seed"] == seeds[0] else None)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("optimizer step (symlog)")
        ax.set_ylabel("validation accuracy")
        ax.set_title(f"{arm.upper()}: plain vs EffOPD ({len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=150)


if __name__ == "__main__":
    main()
