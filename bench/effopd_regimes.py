"""EffOPD regime study: early subspace alignment to the final update vs the measured EffOPD speedup, per regime.

EffOPD (arXiv 2605.11739, §4) extrapolates along the last update at every power-of-two step; it can only pay when
OPD's update direction settles early. This script looks for a regime of the reference task where it does. For each
regime and seed it trains, from the same W₀ with the same prompt stream:

- plain OPD (checkpoints at every power of two and every ``save_every``), analysed for the top-20 left-subspace
  similarity of ΔW_t to ΔW_T (``alignment_to_final``, chance k/d beside it) and ``subspace_locking``;
- OPD with the online EffOPD search as a step hook, once per EffOPD preset: ``paper`` (accept on ≥, attention/MLP
  weight matrices) and ``authors`` (the released code: accept on strictly >, attention/MLP biases too).

The search scores greedy accuracy on the first 50 training problems (the paper's validation set). Validation
accuracy (200 problems) is logged at every checkpoint step. Speedup to x % = (first plain step reaching x % of plain
OPD's final accuracy) / (first EffOPD step reaching it).

Usage (one process per seed; then the table and the figure from the JSON files)::

    python bench/effopd_regimes.py --seeds 0 --out /tmp/er/s0 --lab /tmp/lab-s{seed}
    python bench/effopd_regimes.py --seeds 1 --out /tmp/er/s1 --lab /tmp/lab-s{seed}
    python bench/effopd_regimes.py --from-json /tmp/er/s*/regimes.json --out /tmp/er/all

``--lab`` names a reference-run directory (``teacher/``, ``base/``) of the ``default`` preset for each seed, as
``build_reference_runs`` writes it; missing ones are trained (about 2–4 CPU-minutes per seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import pandas as pd

from opd_dynamics.effopd.speedup import step_speedup

EFFOPD_PRESETS = ("paper", "authors")       # opd_dynamics.presets: the paper's text / the released code
# lr: Adam's step size; student: the W0 architecture (wide = the teacher's shape, still pre-trained only to 20 %).
# horizons: run lengths T read off one run. The schedule is constant after warm-up, so a T-step run is exactly the
# first T steps of a longer one (plain and online EffOPD alike); alignment is then measured to ΔW_T.
REGIMES = {
    "default": {"run_lr": 3e-4, "run_steps": 64, "student": None, "horizons": (32, 64)},
    "wide-student": {"run_lr": 3e-4, "run_steps": 64, "student": {"hidden": 128, "layers": 4, "heads": 4,
                                                                   "intermediate": 512}, "horizons": (64,)},
    "low-lr": {"run_lr": 1e-4, "run_steps": 128, "student": None, "save_every": 16, "horizons": (64, 128)},
    # wider and deeper than the teacher (160×6, 2.4× the wide student's parameters): still W0 at 20 %, 1 seed
    "wide-deep": {"run_lr": 3e-4, "run_steps": 64, "student": {"hidden": 160, "layers": 6, "heads": 4,
                                                                "intermediate": 640}, "horizons": (64,)},
}
EARLY_FRACTIONS = (0.0625, 0.125, 0.25)      # early steps, as a fraction of the run: 4, 8, 16 of 64


def preset_for(regime: str):
    from opd_dynamics.lab import ModelSpec, get_preset

    r = dict(REGIMES[regime])
    student = r.pop("student")
    r.pop("horizons")
    p = get_preset("default")
    if student is not None:
        r["student"] = ModelSpec(**student)
    # no token diagnostics at each evaluation: they do not change training and cost a third of a run
    return dataclasses.replace(p, diagnostic_prompts=0, **r)


def teacher_and_base(lab: Path, regime: str, seed: int, out: Path):
    """The default preset's teacher and W₀ from ``lab`` (trained if missing); a wide W₀ trained and cached in ``out``."""
    from opd_dynamics.lab import build_model, get_preset, make_task, save_model_dir, train, TrainConfig
    from opd_dynamics.lab import Evaluator, SFTStep, char_tokenizer
    from opd_dynamics.lab.models import load_model

    p = get_preset("default")
    task, tok = make_task(p, seed), char_tokenizer()

    def pretrain(spec, target, steps, s, where):
        if (where / "config.json").exists():
            return load_model(where)
        model = build_model(spec, tok, s)
        config = TrainConfig(steps=steps, lr=p.pretrain_lr, warmup=min(20, steps), schedule="cosine",
                             eval_every=p.pretrain_eval_every, stop_at_accuracy=target)
        train(model, tok, SFTStep(tok, task.examples("train"), p.pretrain_batch, s), config,
              evaluate=Evaluator(tok, task, task.examples("validation")), progress=False)
        save_model_dir(model, tok, where, "float32")
        return model

    teacher = pretrain(p.teacher, p.teacher_target, p.teacher_steps, seed, lab / "teacher").eval()
    if REGIMES[regime]["student"] is None:
        base = pretrain(p.student, p.base_target, p.base_steps, seed + 1, lab / "base")
    else:
        base = pretrain(preset_for(regime).student, p.base_target, p.base_steps, seed + 1,
                        out / f"base-{regime}-s{seed}")
    return task, tok, teacher, base


def early_alignment(run_dir: Path, base_dir: Path, horizon: int) -> dict:
    """Mean over attention/MLP matrices of alignment_to_final (top-20 left subspace, to ΔW at ``horizon``) and
    subspace_locking, each with its chance row, per saved step ≤ horizon."""
    from opd_dynamics.analyze import analyze
    from opd_dynamics.io.discovery import open_run

    steps = [s for s in sorted(open_run(run_dir, base=base_dir, warn_missing=False).steps) if s <= horizon]
    df = analyze([run_dir], base=base_dir, metrics=["alignment_to_final", "subspace_locking"], steps=steps,
                 select=["kind=body", "matrix"], progress=False, cache=False, device="cpu")
    mean = df.groupby(["metric", "step"]).value.mean()
    out = {}
    for metric in ("alignment_to_final", "alignment_to_final_chance", "subspace_locking", "subspace_locking_chance"):
        out[metric] = {str(int(s)): float(v) for s, v in mean[metric].items()} if metric in mean.index.levels[0] else {}
    return out


def segments(run_dir: Path, base_dir: Path) -> dict:
    """cos(W_t − W_{t/2}, W_{2t} − W_t) and the norm ratio over the attention/MLP matrices, per power of two."""
    from safetensors.numpy import load_file

    from opd_dynamics.effopd import extrapolated_names
    from opd_dynamics.effopd.speedup import segment_cosines

    files = {0: base_dir / "model.safetensors"}
    files.update({int(d.name.split("-")[1]): d / "model.safetensors" for d in run_dir.glob("checkpoint-*")})
    pow2 = {s: f for s, f in files.items() if s == 0 or s & (s - 1) == 0}
    weights = {s: load_file(str(f)) for s, f in pow2.items()}
    names = extrapolated_names(list(weights[0]))
    return {str(t): list(v) for t, v in segment_cosines(weights, names).items()}


def one(regime: str, seed: int, effopd: str | None, lab: Path, out: Path, keep: Path | None = None) -> dict:
    from opd_dynamics.effopd import EffOPD
    from opd_dynamics.lab import accuracy
    from opd_dynamics.lab.arms import run_arm

    task, tok, teacher, base = teacher_and_base(lab, regime, seed, out)
    p = preset_for(regime)
    probe = task.examples("train")[:50]
    clock, hooks, search = {}, [], None
    if effopd is not None:
        search = EffOPD(lambda m: accuracy(m, tok, task, probe), base, preset=effopd)
        hooks.append(search)
    t0, c0 = time.perf_counter(), time.process_time()
    hooks.append(lambda model, step, log: clock.__setitem__(step, time.perf_counter() - t0))
    with tempfile.TemporaryDirectory() as d:
        run_dir = keep if keep is not None else Path(d) / "run"
        _model, history = run_arm("opd", base, teacher, tok, task, p, run_dir, seed, step_hooks=hooks,
                                  progress=False)
    curve = [(h["step"], h["eval_accuracy"]) for h in history if "eval_accuracy" in h]
    return {"regime": regime, "seed": seed, "effopd": effopd, "curve": curve,
            "wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "clock": clock,
            "searches": [r.to_json() for r in (search.history if search else [])],
            "settings": {"rule": search.rule, "params": search.params} if search else None,
            "base_accuracy": curve[0][1], "params": sum(x.numel() for x in base.parameters())}


def summarise(results: list[dict]) -> pd.DataFrame:
    """One row per (regime, run length T, seed, EffOPD preset): early alignment to ΔW_T vs the speedup to T."""
    rows = []
    for (regime, seed), plain in {(r["regime"], r["seed"]): r for r in results if r["effopd"] is None}.items():
        for T in REGIMES[regime]["horizons"]:
            al = plain["alignment"][str(T)]
            pc = [(s, a) for s, a in plain["curve"] if s <= T]
            for eff in EFFOPD_PRESETS:
                e = next((r for r in results if r["regime"] == regime and r["seed"] == seed and r["effopd"] == eff),
                         None)
                if e is None:
                    continue
                ec = [(s, a) for s, a in e["curve"] if s <= T]
                row = {"regime": regime, "T": T, "lr": REGIMES[regime]["run_lr"], "seed": seed, "effopd": eff,
                       "base": plain["base_accuracy"], "plain_final": pc[-1][1], "effopd_final": ec[-1][1]}
                for frac in EARLY_FRACTIONS:
                    t = int(round(frac * T))
                    row[f"align@T/{round(1 / frac)}"] = al["alignment_to_final"].get(str(t), math.nan)
                    row[f"lock@T/{round(1 / frac)}"] = al["subspace_locking"].get(str(t), math.nan)
                row["align_chance"] = next(iter(al["alignment_to_final_chance"].values()))
                row["lock_chance"] = next(iter(al["subspace_locking_chance"].values()))
                for frac in (0.9, 0.95):
                    sp, se, ratio = step_speedup(pc, ec, frac)
                    row[f"steps{int(frac * 100)}"] = f"{sp:.0f}/{se:.0f}"
                    row[f"speedup{int(frac * 100)}"] = ratio
                late = [a for s, a in pc if s >= T // 4]
                row["mean_acc_plain"] = sum(late) / len(late)
                late = [a for s, a in ec if s >= T // 4]
                row["mean_acc_effopd"] = sum(late) / len(late)
                row["accepted"] = ",".join(str(x["accepted_k"]) for x in e["searches"] if x["step"] <= T)
                # the first candidate (+2Δ) against the weights it extrapolates from, on the search's 50 problems
                first = [x["scores"][1] - x["scores"][0] for x in e["searches"] if x["step"] <= T and len(x["scores"]) > 1]
                row["k1_worse/tie/better"] = (f"{sum(d < 0 for d in first)}/{sum(d == 0 for d in first)}/"
                                              f"{sum(d > 0 for d in first)}")
                row["k1_mean_change"] = sum(first) / len(first) if first else math.nan
                seg = [v for t, v in plain.get("segments", {}).items() if 2 * int(t) <= T]
                row["segment_cos"] = sum(c for c, _ in seg) / len(seg) if seg else math.nan
                row["segment_norm_ratio"] = sum(r for _, r in seg) / len(seg) if seg else math.nan
                rows.append(row)
    return pd.DataFrame(rows)


def markdown(df: pd.DataFrame) -> str:
    """The table of docs/effopd.md: one row per (regime, T, seed, preset)."""
    head = ("| regime | T | seed | EffOPD preset | align. at T/8 (chance) | locking at T/8 (chance) | segment cos | "
            "+2Δ vs W_t on the 50 (worse/tie/better; mean) | accepted k | steps to 90 % (plain/EffOPD) | speedup 90 % | "
            "mean acc. from T/4 (plain/EffOPD) | acc. at T (plain/EffOPD) |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in df.itertuples(index=False):
        d = r._asdict()
        sp = "—" if math.isnan(d["speedup90"]) else f"{d['speedup90']:.2f}"
        lines.append(
            f"| {d['regime']} (lr {d['lr']:g}) | {d['T']} | {d['seed']} | {d['effopd']} | "
            f"{d['align_T_8']:.2f} ({d['align_chance']:.2f}) | {d['lock_T_8']:.2f} ({d['lock_chance']:.2f}) | "
            f"{d['segment_cos']:.2f} | {d['k1_worse_tie_better']}; {d['k1_mean_change']:+.2f} | {d['accepted']} | "
            f"{d['steps90']} | {sp} | {d['mean_acc_plain']:.3f} / {d['mean_acc_effopd']:.3f} | "
            f"{d['plain_final']:.3f} / {d['effopd_final']:.3f} |")
    return "\n".join(lines)


def plot(results: list[dict], df: pd.DataFrame, path: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in REGIMES if r in set(df.regime)]
    ncol = 2
    nrow = (len(regimes) + 2) // ncol
    fig, grid = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.2 * nrow), squeeze=False)
    axes = list(grid.ravel())
    colours = {None: "#0072B2", "paper": "#D55E00", "authors": "#009E73"}
    styles = ["-", "--", ":"]
    for ax, regime in zip(axes, regimes):
        seeds = sorted({r["seed"] for r in results if r["regime"] == regime})
        for r in results:
            if r["regime"] != regime:
                continue
            i = seeds.index(r["seed"])
            s, a = zip(*r["curve"])
            plain = r["effopd"] is None   # drawn thick underneath: EffOPD runs that accept nothing lie on top of it
            ax.plot(s, a, color=colours[r["effopd"]], ls=styles[i % 3], marker="o", ms=2, lw=3.2 if plain else 1.1,
                    alpha=0.45 if plain else 1.0, zorder=1 if plain else 2,
                    label=f"{'plain OPD' if r['effopd'] is None else 'EffOPD ' + r['effopd']}, seed {r['seed']}")
            acc = dict(r["curve"])
            hits = [x["step"] for x in r["searches"] if x["accepted_k"] > 0 and x["step"] in acc]
            ax.scatter(hits, [acc[h] for h in hits], marker="*", s=80, color=colours[r["effopd"]],
                       edgecolor="black", linewidth=0.4, zorder=5)
        for T in REGIMES[regime]["horizons"][:-1]:
            ax.axvline(T, color="grey", ls=":", lw=1)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(0, REGIMES[regime]["run_steps"] * 1.05)
        ax.set_ylim(0, 1)
        ax.set_title(f"{regime}: lr {REGIMES[regime]['run_lr']:g}, {REGIMES[regime]['run_steps']} steps", fontsize=9)
        ax.set_xlabel("optimizer step (symlog); ★ accepted jump")
        ax.set_ylabel("validation accuracy (200 problems)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, frameon=False, loc="lower right")
    for extra in axes[len(regimes) + 1:]:
        extra.axis("off")
    ax = axes[len(regimes)]
    markers = {"paper": "o", "authors": "s"}
    groups = list(df.groupby(["regime", "T"], sort=False))
    for i, ((regime, T), sub) in enumerate(groups):
        for eff, g in sub.groupby("effopd"):
            y = g["speedup90"].fillna(0.5) * (1.04 if eff == "authors" else 0.96)   # side by side where equal
            ax.scatter(g["align@T/8"], y, marker=markers[eff], s=42, color=f"C{i}", edgecolor="black",
                       linewidth=0.4, label=f"{regime}, T={T}, {eff}")
        ax.axvline(sub.align_chance.iloc[0], color="grey", ls=":", lw=1)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_yscale("log", base=2)
    ax.set_ylim(0.4, 20)
    ax.set_xlabel("top-20 subspace similarity of ΔW at T/8 to ΔW_T\n(dotted: chance k/d)")
    ax.set_ylabel("EffOPD step speedup to 90 % of plain's accuracy at T\n(log scale; 0.5 = never reached)")
    ax.set_title("early alignment vs measured speedup", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=5.5, frameon=False, ncol=1, loc="upper left")
    fig.text(0.01, 0.005, note, fontsize=6, color="grey")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=130)


def machine_note() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (math.nan,) * 3
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores shared, load {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}, 1 torch thread"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--effopd", nargs="+", default=list(EFFOPD_PRESETS), choices=list(EFFOPD_PRESETS),
                    help="EffOPD presets to run (opd_dynamics.presets)")
    ap.add_argument("--lab", default="/tmp/effopd-regimes/lab-s{seed}",
                    help="reference-run directory per seed ({seed} is filled in): teacher/ and base/ are reused")
    ap.add_argument("--out", default="/tmp/effopd-regimes")
    ap.add_argument("--from-json", nargs="*", default=None, help="summarise earlier runs' regimes.json files")
    ap.add_argument("--resume", action="store_true", help="keep the finished runs of OUT/regimes.json")
    ap.add_argument("--no-plain", action="store_true",
                    help="EffOPD runs only (another process runs the plain one; combine with --from-json)")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    if a.from_json is not None:
        for f in a.from_json:
            rs = json.loads(Path(f).read_text())
            for r in rs:   # runs written before the segment diagnostic existed: compute it from the kept checkpoints
                keep = Path(f).parent / f"plain-{r['regime']}-s{r['seed']}"
                if r["effopd"] is None and "segments" not in r and keep.exists():
                    base_dir = (Path(a.lab.format(seed=r["seed"])) / "base" if REGIMES[r["regime"]]["student"] is None
                                else Path(f).parent / f"base-{r['regime']}-s{r['seed']}")
                    r["segments"] = segments(keep, base_dir)
            results += rs
    else:
        done = out / "regimes.json"
        if a.resume and done.exists():   # keep finished runs whose EffOPD settings are the current preset's
            from opd_dynamics.presets import settings

            results = [r for r in json.loads(done.read_text())
                       if r["effopd"] is None or r.get("settings") == settings("effopd", r["effopd"])]
        for seed in a.seeds:
            lab = Path(a.lab.format(seed=seed))
            for regime in a.regimes:
                have = {(r["regime"], r["seed"], r["effopd"]) for r in results}
                keep = out / f"plain-{regime}-s{seed}"
                base_dir = lab / "base" if REGIMES[regime]["student"] is None else out / f"base-{regime}-s{seed}"
                if (regime, seed, None) not in have and not a.no_plain:
                    r = one(regime, seed, None, lab, out, keep=keep)
                    results.append(r)
                    print(f"{regime} seed {seed} plain: final {r['curve'][-1][1]:.3f}, cpu {r['cpu']:.0f}s", flush=True)
                plain = next((r for r in results if (r["regime"], r["seed"], r["effopd"]) == (regime, seed, None)), None)
                if plain is not None:
                    plain["alignment"] = {str(T): early_alignment(keep, base_dir, T) for T in REGIMES[regime]["horizons"]}
                    plain["segments"] = segments(keep, base_dir)
                    done.write_text(json.dumps(results, indent=1))
                for eff in a.effopd:
                    if (regime, seed, eff) in have:
                        continue
                    r = one(regime, seed, eff, lab, out)
                    results.append(r)
                    print(f"{regime} seed {seed} effopd {eff}: final {r['curve'][-1][1]:.3f}, cpu {r['cpu']:.0f}s, "
                          f"accepted {[s['accepted_k'] for s in r['searches']]}", flush=True)
                    done.write_text(json.dumps(results, indent=1))
        (out / "machine.txt").write_text(machine_note() + "\n")
    df = summarise(results)
    df.to_csv(out / "regimes.csv", index=False)
    md = markdown(df.rename(columns=lambda c: c.replace("@T/", "_T_").replace("/", "_")))
    (out / "regimes.md").write_text(md + "\n")
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(df.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    note = machine_note()
    notes = [Path(f).parent / "machine.txt" for f in (a.from_json or [])]
    if notes and all(n.exists() for n in notes):
        note = " | ".join(n.read_text().strip() for n in notes)
    plot(results, df, out / "effopd_regimes.png", note)


if __name__ == "__main__":
    main()
