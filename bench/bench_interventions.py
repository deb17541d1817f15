"""Benchmark the intervention engine on the lab reference runs: plans per minute, time editing vs evaluating,
and proof that a plan reads only the tensors it touches.

Runs a mixed set of plans on the OPD run (sliding windows, which touch few tensors; norm scaling and spectral
partitions, which touch all; an early rescale, which reads two checkpoints per tensor) with the read cache off,
and checks for every plan that the checkpoint reads counted by ``Checkpoint.reads`` equal
(number of touched tensors) × (checkpoints the plan's edits need). Then times the same plans with the default
cache. Prints one JSON object.

Usage: python bench/bench_interventions.py [--dir /tmp/opd-lab] [--preset small] [--evaluator loglik:limit=100]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def plans(n_layers: int):
    from opd_dynamics.edits import EditSpec
    from opd_dynamics.plans import Plan, Rule
    from opd_dynamics.studies.sliding_window import default_half_width
    from opd_dynamics.studies.sliding_window import plans as window_plans

    h = default_half_width(n_layers)
    out = window_plans(n_layers, h, list(range(n_layers - h)), ("mlp", "attn"), qk_norm=False)
    out += [Plan("bench", "scale", a, (Rule((), EditSpec("scale", {"alpha": a})),)) for a in (0.25, 0.5, 0.75)]
    out += [Plan("bench", "spectral", p, (Rule(("kind=body",), EditSpec("spectral", {"percent": p})),
                                          Rule((), EditSpec("identity")))) for p in (10.0, 50.0)]
    out += [Plan("bench", "early", 1.0, (Rule((), EditSpec("norm_rescale")),), source="25%")]
    return out


def measure(engine, run, plan_list, evaluators, check_reads: bool) -> dict:
    stats0 = dict(engine.stats)
    reads_ok, per_plan = True, []
    t0 = time.perf_counter()
    for plan in plan_list:
        before = {s: ck.reads for s, ck in run.steps.items()}
        with engine.applied(plan, run) as model:
            te = time.perf_counter()
            for ev in evaluators:
                ev(model)
            engine.stats["eval_s"] += time.perf_counter() - te
        info = engine.last
        reads = sum(ck.reads - before[s] for s, ck in run.steps.items())
        needed = len(set(info.steps.values()) - {0})  # source (+ final for a rescale)
        expected = len(info.tensors) * needed
        per_plan.append({"plan": plan.module, "tensors_touched": len(info.tensors), "reads": reads,
                         "expected_reads": expected})
        if check_reads and reads != expected:
            reads_ok = False
    wall = time.perf_counter() - t0
    d = {k: engine.stats[k] - stats0.get(k, 0) for k in ("edit_s", "restore_s", "eval_s")}
    return {"plans": len(plan_list), "wall_s": round(wall, 2), "plans_per_minute": round(60 * len(plan_list) / wall, 1),
            "edit_s": round(d["edit_s"] + d["restore_s"], 3), "eval_s": round(d["eval_s"], 2),
            "eval_share": round(d["eval_s"] / wall, 3), "edit_share": round((d["edit_s"] + d["restore_s"]) / wall, 4),
            "reads_match_touched": reads_ok if check_reads else None, "per_plan": per_plan if check_reads else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-lab")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--evaluator", default="loglik:limit=100")
    args = ap.parse_args()
    from opd_dynamics.evaluators import EvalContext, EvalSpec
    from opd_dynamics.interventions import InterventionEngine
    from opd_dynamics.lab import build_reference_runs, make_task

    refs = build_reference_runs(Path(args.dir) / args.preset, preset=args.preset, seed=0, progress=False)
    t0 = time.perf_counter()
    engine = InterventionEngine(refs.base, cache_mb=0)
    load_s = time.perf_counter() - t0
    run = engine.open_run(refs.runs["opd"], name="opd")
    ctx = EvalContext(make_task(args.preset, 0), engine.tokenizer, progress=False)
    evaluators = [EvalSpec.parse(args.evaluator).build(ctx)]
    evaluators[0](engine.model)  # warm-up
    ps = plans(engine.n_layers)
    no_cache = measure(engine, run, ps, evaluators, check_reads=True)
    engine.cache_bytes = 256 * 2 ** 20
    cached = measure(engine, run, ps, evaluators, check_reads=False)
    cached.pop("per_plan")
    cached.pop("reads_match_touched")
    print(json.dumps({"preset": args.preset, "evaluator": args.evaluator, "layers": engine.n_layers,
                      "tensors_in_model": len(engine._params), "model_load_s": round(load_s, 2),
                      "no_cache": no_cache, "cache_256mb": cached}, indent=1))


if __name__ == "__main__":
    main()
