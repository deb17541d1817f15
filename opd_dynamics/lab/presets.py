"""Sizes and budgets of the reference runs, one frozen :class:`Preset` per name.

``default`` is what ``opd-dynamics demo`` analyses (about 4.5 CPU-minutes, one thread), ``small`` is a
smoke-scale look (about a minute; its W₀ stays near 5 % and 16 steps barely move it), ``tiny`` exists
for unit tests (seconds; its models learn nothing). Measured figures: ``docs/reference-runs.md``.

Teacher and base W₀ are trained by SFT on the task's worked solutions and stop early once their
validation accuracy reaches ``*_target`` (checked every ``pretrain_eval_every`` steps), so W₀ is
"weak but not hopeless" by construction rather than by a tuned step count. The three post-training
arms then run ``run_steps`` optimizer steps each from the same W₀, on the same prompts
(``prompts_per_step`` per step), each prompt with ``group_size`` responses: student samples for OPD
and GRPO, verifier-accepted teacher samples for SFT. OPD and SFT use ``run_lr``, a tenth of the
pre-training rate, after a short warm-up: a fresh Adam's first steps move every weight by about the
learning rate, and at 1e-3 the first OPD step alone took W₀ from 30 % to 8 %. GRPO uses ``rl_lr``
(None: ``run_lr``), six times lower in ``default``: its gradient from 16 × 8 samples of 0/1 reward
is mostly noise (the signs of two batches' gradients agree on 52 % of the weights at W₀, OPD's on
69 %), Adam turns noise into steps of full size, and at 3e-4 GRPO took W₀ from 30 % to 3 % in 64
steps while its own training reward fell; at 5e-5 it improves W₀ (measured: docs/reference-runs.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..task.addition import LAB_TASKS
from .models import ModelSpec


@dataclass(frozen=True)
class Preset:
    """One preset; its task (digits and problem counts) is the row of the same name in ``task.addition.LAB_TASKS``."""

    digits: int
    n_train: int
    n_eval: int                     # size of validation and of test
    teacher: ModelSpec
    student: ModelSpec
    teacher_steps: int              # at most; stops at teacher_target
    teacher_target: float
    base_steps: int                 # at most; stops at base_target
    base_target: float
    pretrain_batch: int
    pretrain_lr: float
    pretrain_eval_every: int
    run_steps: int
    prompts_per_step: int
    group_size: int
    run_lr: float
    run_warmup: int
    save_every: int
    diagnostic_prompts: int
    opd_variant: str = "full"
    rl_lr: float | None = None      # the GRPO arm's learning rate; None: run_lr


PRESETS: dict[str, Preset] = {
    "default": Preset(
        **LAB_TASKS["default"],
        teacher=ModelSpec(hidden=128, layers=4, heads=4, intermediate=512),
        student=ModelSpec(hidden=64, layers=8, heads=4, intermediate=256),
        teacher_steps=600, teacher_target=0.97, base_steps=400, base_target=0.2,
        pretrain_batch=64, pretrain_lr=3e-3, pretrain_eval_every=25,
        run_steps=64, prompts_per_step=16, group_size=8, run_lr=3e-4, run_warmup=4, save_every=8,
        diagnostic_prompts=64, rl_lr=5e-5),
    "small": Preset(
        **LAB_TASKS["small"],
        teacher=ModelSpec(hidden=96, layers=4, heads=4, intermediate=384),
        student=ModelSpec(hidden=48, layers=8, heads=4, intermediate=192),
        teacher_steps=300, teacher_target=0.95, base_steps=200, base_target=0.2,
        pretrain_batch=64, pretrain_lr=3e-3, pretrain_eval_every=25,
        run_steps=16, prompts_per_step=8, group_size=8, run_lr=3e-4, run_warmup=4, save_every=4,
        diagnostic_prompts=32, rl_lr=5e-5),
    "tiny": Preset(
        **LAB_TASKS["tiny"],
        teacher=ModelSpec(hidden=32, layers=2, heads=2, intermediate=64, max_positions=32),
        student=ModelSpec(hidden=16, layers=4, heads=2, intermediate=32, max_positions=32),
        teacher_steps=20, teacher_target=1.0, base_steps=5, base_target=1.0,
        pretrain_batch=16, pretrain_lr=3e-3, pretrain_eval_every=10,
        run_steps=4, prompts_per_step=4, group_size=2, run_lr=3e-4, run_warmup=1, save_every=0,
        diagnostic_prompts=4),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
