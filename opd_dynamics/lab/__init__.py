"""The lab: small but real OPD, RL and SFT training runs of tiny models on the CPU (the reference runs).

The lab sits above the library: it uses the task protocol (:mod:`opd_dynamics.task`), generation
(:mod:`opd_dynamics.generation`) and token diagnostics (:mod:`opd_dynamics.diagnostics`), and nothing in the
library imports it. Data flow, one file per idea::

    tokenizer.py            character tokenizer as a PreTrainedTokenizerFast
    models.py               tiny Qwen2 / Llama models from configs
    sft.py, opd.py, grpo.py the three losses and their per-step trainers
    batches.py              prompt batches per step
    loop.py                 the shared optimizer loop: hooks, evaluation, checkpoints
    checkpoints.py          HF-Trainer-style checkpoint-N/ directories and trainer_state.json
    evaluation.py           verifier accuracy + diagnostics during training
    presets.py, arms.py     preset sizes; run_arm: one OPD / RL / SFT run from W0
    reference.py            build_reference_runs: teacher, W0 and the three runs, cached

The names below are imported on first use (PEP 562): ``from opd_dynamics.lab import PRESETS`` loads the presets,
not the trainers.

Example (seconds; the ``tiny`` preset's models learn little)::

    from opd_dynamics.lab import build_reference_runs
    refs = build_reference_runs("out/lab", preset="tiny")
    refs.base, refs.runs["opd"]   # --base DIR and a run directory for the analysis
"""

import importlib
from typing import TYPE_CHECKING

# public name -> module that defines it (relative to this package; ``..`` for the library's own)
_LAZY = {
    "AdditionTask": "..task.addition", "Example": "..task.protocol", "Task": "..task.protocol",
    "JsonlTask": "..task.rows", "RowsTask": "..task.rows",
    "Rollout": "..generation", "generate": "..generation", "response_logits": "..generation",
    "gap_recovery": "..diagnostics", "token_diagnostics": "..diagnostics",
    "checkpoint_steps": ".checkpoints", "save_checkpoint": ".checkpoints", "save_model_dir": ".checkpoints",
    "Evaluator": ".evaluation", "accuracy": ".evaluation", "greedy_accuracy": ".evaluation",
    "GRPOStep": ".grpo", "group_advantages": ".grpo", "grpo_loss": ".grpo",
    "StepHook": ".loop", "TrainConfig": ".loop", "train": ".loop",
    "ModelSpec": ".models", "build_model": ".models",
    "OPDStep": ".opd", "opd_loss": ".opd", "reverse_kl": ".opd",
    "PRESETS": ".presets", "Preset": ".presets", "get_preset": ".presets",
    "ARMS": ".arms", "run_arm": ".arms", "torch_threads": ".arms",
    "ReferenceRuns": ".reference", "build_reference_runs": ".reference", "make_task": ".reference",
    "SFTStep": ".sft", "TeacherSFTStep": ".sft", "sft_loss": ".sft",
    "char_tokenizer": ".tokenizer", "load_tokenizer": ".tokenizer",
}

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from ..diagnostics import gap_recovery, token_diagnostics
    from ..generation import Rollout, generate, response_logits
    from ..task.addition import AdditionTask
    from ..task.protocol import Example, Task
    from ..task.rows import JsonlTask, RowsTask
    from .arms import ARMS, run_arm, torch_threads
    from .checkpoints import checkpoint_steps, save_checkpoint, save_model_dir
    from .evaluation import Evaluator, accuracy, greedy_accuracy
    from .grpo import GRPOStep, group_advantages, grpo_loss
    from .loop import StepHook, TrainConfig, train
    from .models import ModelSpec, build_model
    from .opd import OPDStep, opd_loss, reverse_kl
    from .presets import PRESETS, Preset, get_preset
    from .reference import ReferenceRuns, build_reference_runs, make_task
    from .sft import SFTStep, TeacherSFTStep, sft_loss
    from .tokenizer import char_tokenizer, load_tokenizer

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'opd_dynamics.lab' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
