"""Online early-subspace projection (Geometry of OPD, arXiv 2606.07082) on the reference task: OPD and SFT, plain
and projected.

For each seed, from the same W₀ and prompt stream (the ``default`` reference preset: 64 steps, lr 3e-4), the OPD and
the SFT arm are trained twice: plain, and with :class:`~opd_dynamics.callbacks.EarlySubspaceProjection` as a step
hook (t₀ = 20 % of the run = step 13, K = 16, right side: every later step of every attention/MLP matrix is
projected onto the top-16 right singular subspace of its ΔW_{t₀}). The paper's claim: OPD keeps its score, SFT loses.

Usage::

    python bench/online_projection.py --seeds 0 1 --lab /tmp/lab-s{seed} --out /tmp/op
    python bench/online_projection.py --from-json /tmp/op/projection.json --out /tmp/op

``--lab``: a ``default``-preset reference-run directory per seed (``teacher/``, ``base/``; trained if missing).
Writes OUT/projection.json, OUT/projection.csv and OUT/online_projection.png; prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from effopd_regimes import machine_note, teacher_and_base  # noqa: E402

AT, K = "20%", 16


def one(arm: str, projected: bool, seed: int, lab: Path, out: Path, k: int = K) -> dict:
    from opd_dynamics.callbacks import EarlySubspaceProjection
    from opd_dynamics.lab import accuracy, get_preset
    from opd_dynamics.lab.arms import run_arm

    task, tok, teacher, base = teacher_and_base(lab, "default", seed, out)
    p = get_preset("default")
    hooks = [EarlySubspaceProjection(AT, k, total_steps=p.run_steps, model=base)] if projected else []
    t0, c0 = time.perf_counter(), time.process_time()
    model, history = run_arm(arm, base, teacher, tok, task, p, None, seed, step_hooks=hooks, progress=False)
    curve = [(h["step"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]
    kept = [h["projection_kept"] for h in history if "projection_kept" in h]
    return {"arm": arm, "projected": projected, "k": k if projected else None, "seed": seed, "curve": curve,
            "test_accuracy": accuracy(model, tok, task, task.examples("test")),
            "t0": hooks[0].t0 if hooks else None, "kept_mean": sum(kept) / len(kept) if kept else None,
            "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}


def summarise(results: list[dict]) -> pd.DataFrame:
    rows = []
    for r in results:
        if r["projected"]:
            continue
        for q in [x for x in results if x["projected"] and x["arm"] == r["arm"] and x["seed"] == r["seed"]]:
            rows.append({"arm": r["arm"], "k": q.get("k", K), "seed": r["seed"], "base": r["curve"][0][1],
                         "plain_val": r["curve"][-1][1], "projected_val": q["curve"][-1][1],
                         "val_change": q["curve"][-1][1] - r["curve"][-1][1],
                         "plain_test": r["test_accuracy"], "projected_test": q["test_accuracy"],
                         "test_change": q["test_accuracy"] - r["test_accuracy"],
                         "kept_share": q["kept_mean"], "t0": q["t0"]})
    return pd.DataFrame(rows).sort_values(["arm", "k", "seed"], ascending=[True, False, True])


def plot(results: list[dict], path: Path, note: str) -> None:
    """Final accuracy (validation and test, 200 problems each) per arm and variant: bars the seed mean, dots the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in ("opd", "sft", "rl") if any(r["arm"] == a for r in results)]
    ks = sorted({r["k"] for r in results if r["projected"]}, reverse=True)
    variants = [None, *ks]
    colours = {None: "#0072B2", 16: "#D55E00", 4: "#CC79A7"}
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    for ax, (label, value) in zip(axes, (("validation", lambda r: r["curve"][-1][1]),
                                         ("test", lambda r: r["test_accuracy"]))):
        ticks, names = [], []
        for i, arm in enumerate(arms):
            for j, k in enumerate(variants):
                x = i * (len(variants) + 1) + j
                vals = [value(r) for r in results if r["arm"] == arm and r.get("k") == k]
                ax.bar(x, sum(vals) / len(vals), color=colours.get(k, "grey"), alpha=0.75, width=0.8)
                ax.scatter([x] * len(vals), vals, color="black", s=12, zorder=3)
                ticks.append(x)
                names.append(f"{arm.upper()}\n{'plain' if k is None else f'K={k}'}")
        w0 = [r["curve"][0][1] for r in results if not r["projected"]]
        ax.axhline(sum(w0) / len(w0), color="grey", ls=":", lw=1)
        ax.text(ticks[-1] + 0.5, sum(w0) / len(w0), "W₀ (val.)", fontsize=7, color="grey", va="bottom", ha="right")
        ax.set_xticks(ticks, names, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{label} accuracy after 64 steps")
        ax.set_title(f"{label}: plain vs projected from t₀ = 13 (20 %)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    fig.text(0.01, 0.005, note + " | bars: mean of seeds, dots: seeds", fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=130)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--arms", nargs="+", default=["opd", "sft"], choices=["opd", "sft", "rl"])
    ap.add_argument("--lab", default="/tmp/effopd-regimes/lab-s{seed}")
    ap.add_argument("--out", default="/tmp/online-projection")
    ap.add_argument("--from-json", default=None)
    ap.add_argument("--k", type=int, nargs="+", default=[K], help="subspace sizes to run (the paper: 16)")
    ap.add_argument("--resume", action="store_true", help="keep the finished runs of OUT/projection.json")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.from_json:
        results = json.loads(Path(a.from_json).read_text())
        for r in results:
            r.setdefault("k", K if r["projected"] else None)
    else:
        done = out / "projection.json"
        results = json.loads(done.read_text()) if a.resume and done.exists() else []
        for r in results:
            r.setdefault("k", K if r["projected"] else None)
        for seed in a.seeds:
            for arm in a.arms:
                for k in [*a.k, None]:
                    if any((r["arm"], r["seed"], r["k"]) == (arm, seed, k) for r in results):
                        continue
                    r = one(arm, k is not None, seed, Path(a.lab.format(seed=seed)), out, k or K)
                    results.append(r)
                    print(f"seed {seed} {arm} projected={projected}: val {r['curve'][-1][1]:.3f} "
                          f"test {r['test_accuracy']:.3f} kept {r['kept_mean']} cpu {r['cpu']:.0f}s", flush=True)
                    (out / "projection.json").write_text(json.dumps(results, indent=1))
        (out / "machine.txt").write_text(machine_note() + "\n")
    df = summarise(results)
    df.to_csv(out / "projection.csv", index=False)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    note_file = out / "machine.txt"
    plot(results, out / "online_projection.png", note_file.read_text().strip() if note_file.exists() else machine_note())


if __name__ == "__main__":
    main()
