"""One more run of an arm from the reference runs' W₀ with another seed (other prompt order and samples), for
cross-run mask consistency (docs/reference-runs.md, "Do OPD, RL and SFT update the same entries?").

Usage: python bench/reference_seed_runs.py LAB_DIR ARM SEED OUT_DIR     e.g.  out/lab opd 1 out/seeds/opd-seed1
then:  opd-dynamics mask-consistency LAB_DIR/runs/ARM OUT_DIR --base LAB_DIR/base --select kind=body
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from transformers import AutoModelForCausalLM

from opd_dynamics.lab import load_tokenizer
from opd_dynamics.lab.arms import run_arm
from opd_dynamics.lab.reference import make_task


def main() -> None:
    lab, arm, seed, out = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    lab_seed = 0  # the task (prompt set) of the reference runs; the arm's seed changes only order and sampling
    tok = load_tokenizer(lab / "base")
    base = AutoModelForCausalLM.from_pretrained(lab / "base")
    teacher = AutoModelForCausalLM.from_pretrained(lab / "teacher")
    start = time.time()
    _, history = run_arm(arm, base, teacher, tok, make_task("default", seed=lab_seed), "default", out, seed=seed,
                         progress=False)
    accuracy = [h["eval_accuracy"] for h in history if "eval_accuracy" in h][-1]
    print(f"{arm} seed {seed}: {time.time() - start:.0f} s, final validation accuracy {accuracy:.3f} -> {out}")


if __name__ == "__main__":
    main()
