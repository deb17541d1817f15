"""The lab: small but real OPD, RL and SFT training runs of tiny models on the CPU.

Data flow, one file per idea::

    task.py / addition.py   Task interface (examples(split), verify(generation, answer)), AdditionTask
    rows.py                 RowsTask / JsonlTask: your own rows, column mapping, chat prompts, answer extraction
    tokenizer.py            character tokenizer as a PreTrainedTokenizerFast
    models.py               tiny Qwen2 / Llama models from configs
    generation.py           rollouts (sampling, greedy) and teacher-forced logits
    sft.py, opd.py, grpo.py the three losses and their per-step trainers
    loop.py                 the shared optimizer loop: hooks, evaluation, checkpoints
    checkpoints.py          HF-Trainer-style checkpoint-N/ directories and trainer_state.json
    diagnostics.py          token-level OPD diagnostics (arXiv 2604.13016)
    evaluation.py           verifier accuracy + diagnostics during training
    presets.py, arms.py     preset sizes; run_arm: one OPD / RL / SFT run from W0
    reference.py            build_reference_runs: teacher, W0 and the three runs, cached

Example (seconds; the ``tiny`` preset's models learn little)::

    from opd_dynamics.lab import build_reference_runs
    refs = build_reference_runs("out/lab", preset="tiny")
    refs.base, refs.runs["opd"]   # --base DIR and a run directory for the analysis
"""

from .addition import AdditionTask
from .checkpoints import checkpoint_steps, save_checkpoint, save_model_dir
from .diagnostics import gap_recovery, token_diagnostics
from .evaluation import Evaluator, accuracy
from .generation import Rollout, generate, response_logits
from .grpo import GRPOStep, group_advantages, grpo_loss
from .loop import StepHook, TrainConfig, train
from .models import ModelSpec, build_model
from .opd import OPDStep, opd_loss, reverse_kl
from .presets import PRESETS, Preset, get_preset
from .arms import ARMS, run_arm, torch_threads
from .reference import ReferenceRuns, build_reference_runs, make_task
from .sft import SFTStep, TeacherSFTStep, sft_loss
from .rows import JsonlTask, RowsTask
from .task import Example, Task
from .tokenizer import char_tokenizer, load_tokenizer

__all__ = [
    "ARMS", "PRESETS", "AdditionTask", "Evaluator", "Example", "GRPOStep", "JsonlTask", "ModelSpec",
    "OPDStep", "Preset", "ReferenceRuns", "Rollout", "RowsTask", "SFTStep", "StepHook", "Task", "TeacherSFTStep",
    "TrainConfig", "accuracy", "build_model", "build_reference_runs", "char_tokenizer", "checkpoint_steps",
    "gap_recovery", "generate", "get_preset", "group_advantages", "grpo_loss", "load_tokenizer", "make_task",
    "opd_loss", "response_logits", "reverse_kl", "run_arm", "save_checkpoint", "save_model_dir", "sft_loss",
    "token_diagnostics", "torch_threads", "train",
]
