"""One post-training arm — OPD, RL (GRPO) or SFT — run from a base model with a preset's settings.

:func:`run_arm` is what :func:`~.reference.build_reference_runs` calls three times, and what a user
calls to make one more run from the same W₀: with a different seed, or with ``step_hooks`` (an
EffOPD extrapolation search, say) called after every optimizer step.

All three arms read the same prompt stream (same ``seed``), take ``run_steps`` AdamW steps with the
same warm-up, at ``run_lr`` (OPD, SFT) or ``rl_lr`` (GRPO; see :mod:`.presets`), and per step
see ``prompts_per_step × group_size`` responses: the student's own for OPD and GRPO,
verifier-accepted teacher samples for SFT. Each evaluation logs validation accuracy and the token
diagnostics against the teacher, so the three runs are measured the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .evaluation import Evaluator
from .grpo import GRPOStep
from .loop import StepHook, TrainConfig, train
from .opd import OPDStep
from .presets import Preset, get_preset
from .sft import TeacherSFTStep
from ..task.protocol import Task

ARMS = ("opd", "rl", "sft")


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: leave torch alone), then restore.

    The lab defaults to 1: these matrices are too small for threads to pay, and on a shared 2-core
    machine two threads per process made a training step 3–10x slower (OpenMP threads waiting on
    each other while other processes hold the cores). Bit-for-bit reproducibility holds for a fixed
    thread count; a different count may change reduction order.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_arm(arm: str, base: PreTrainedModel, teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
            task: Task, preset: str | Preset, run_dir: str | Path | None, seed: int = 0, dtype: str = "float32",
            step_hooks: Sequence[StepHook] = (), progress: bool = True,
            threads: int | None = 1) -> tuple[PreTrainedModel, list[dict]]:
    """Post-train a copy of ``base`` with one arm (``opd``, ``rl``, ``sft``) of a preset.

    ``base`` is not modified. Returns the trained model and its log history; checkpoints go to
    ``run_dir`` unless it is None. ``step_hooks`` run after every optimizer step (see :mod:`.loop`).
    ``threads``: torch intra-op threads for the run (see :func:`torch_threads`).
    """
    with torch_threads(threads):
        p = get_preset(preset) if isinstance(preset, str) else preset
        train_set = task.examples("train")
        common = dict(prompts_per_step=p.prompts_per_step, seed=seed)
        if arm == "opd":
            step = OPDStep(teacher, tokenizer, task, train_set, samples_per_prompt=p.group_size,
                           variant=p.opd_variant, **common)
        elif arm == "rl":
            step = GRPOStep(tokenizer, task, train_set, group_size=p.group_size, **common)
        elif arm == "sft":
            step = TeacherSFTStep(teacher, tokenizer, task, train_set, samples_per_prompt=p.group_size, **common)
        else:
            raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
        model = copy.deepcopy(base)
        evaluator = Evaluator(tokenizer, task, task.examples("validation"), teacher=teacher,
                              diagnostic_prompts=p.diagnostic_prompts, seed=seed)
        lr = p.rl_lr if arm == "rl" and p.rl_lr is not None else p.run_lr
        config = TrainConfig(steps=p.run_steps, lr=lr, warmup=p.run_warmup, save_every=p.save_every,
                             dtype=dtype)
        history = train(model, tokenizer, step, config, evaluate=evaluator, run_dir=run_dir,
                        step_hooks=step_hooks, desc=arm, progress=progress)
        return model, history
