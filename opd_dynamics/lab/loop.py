"""The one optimizer loop every trainer shares: step, hooks, evaluate, checkpoint.

A trainer is a ``step_fn(model, step) -> (loss, logs)`` (:mod:`.sft`, :mod:`.opd`, :mod:`.grpo`);
:func:`train` owns everything else. Step t (1-based) is::

    loss, logs = step_fn(model, t); loss.backward(); clip ‖g‖₂ ≤ grad_clip; AdamW step
    for hook in step_hooks: hook(model, t, log)     # log: this step's dict, hooks may add keys
    if t is an evaluation or checkpoint step, or the last: log |= evaluate(model)
    if t is a checkpoint step: write run_dir/checkpoint-t/

Hooks run after the optimizer step and before evaluation and saving, so a hook that edits the
weights in place (the EffOPD extrapolation search) is what gets evaluated and saved, and training
continues from it. The optimizer holds the parameter objects, not copies: edit ``p.data`` in place
(``p.data.copy_(…)``), do not replace parameters; optimizer state is left as it is.

Learning rate: linear warm-up over ``warmup`` steps, then constant or cosine decay to zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .checkpoints import checkpoint_steps, save_checkpoint

StepFn = Callable[[PreTrainedModel, int], tuple[torch.Tensor, dict]]
StepHook = Callable[[PreTrainedModel, int, dict], None]


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 1e-3
    warmup: int = 0
    schedule: str = "constant"        # or "cosine"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    save_every: int = 0               # checkpoints: powers of two, multiples of this, the last step
    eval_every: int = 0               # evaluations: every checkpoint step, plus multiples of this
    stop_at_accuracy: float | None = None  # stop early once eval_accuracy reaches this
    dtype: str = "float32"            # checkpoint dtype; training is always float32


def lr_factor(step: int, config: TrainConfig) -> float:
    if config.warmup and step < config.warmup:
        return (step + 1) / config.warmup
    if config.schedule == "cosine":
        progress = (step - config.warmup) / max(1, config.steps - config.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def train(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, step_fn: StepFn, config: TrainConfig,
          *, evaluate: Callable[[PreTrainedModel], dict] | None = None, run_dir: str | Path | None = None,
          step_hooks: Sequence[StepHook] = (), desc: str = "train", progress: bool = True) -> list[dict]:
    """Train ``model`` in place for ``config.steps`` steps; returns the log history."""
    if config.schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {config.schedule!r}; expected 'constant' or 'cosine'")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    saves = set(checkpoint_steps(config.steps, config.save_every)) if run_dir is not None else set()
    evals = saves | {config.steps} | (set(range(config.eval_every, config.steps + 1, config.eval_every))
                                      if config.eval_every else set())
    history: list[dict] = []
    if evaluate is not None:
        history.append({"step": 0, **evaluate(model)})
    bar = tqdm(range(1, config.steps + 1), desc=desc, disable=not progress, leave=False)
    for step in bar:
        model.train()
        loss, logs = step_fn(model, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        entry = {"step": step, "loss": float(loss.detach()), "learning_rate": scheduler.get_last_lr()[0],
                 "grad_norm": float(grad_norm), **logs}
        optimizer.step()
        scheduler.step()
        for hook in step_hooks:
            hook(model, step, entry)
        stop = False
        if evaluate is not None and step in evals:
            entry.update(evaluate(model))
            bar.set_postfix(acc=f"{entry['eval_accuracy']:.2f}")
            stop = config.stop_at_accuracy is not None and entry["eval_accuracy"] >= config.stop_at_accuracy
        history.append(entry)
        if run_dir is not None and (step in saves or stop):
            save_checkpoint(run_dir, step, config.steps, model, tokenizer, history, config.dtype)
        if stop:
            break
    bar.close()
    return history
