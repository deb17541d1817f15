"""Checkpoints in the layout real trainers write, so the analysis reads ours like anyone's.

::

    run_dir/checkpoint-N/  model.safetensors  config.json  generation_config.json
                           tokenizer.json  tokenizer_config.json  trainer_state.json

``trainer_state.json`` follows the Hugging Face Trainer: ``global_step``, ``max_steps`` and
``log_history``, a list of dicts each with a ``step`` (ours: one dict per optimizer step with
``loss``; evaluation keys such as ``eval_accuracy`` and the token diagnostics are merged into the
dict of the step they were measured at; a ``step: 0`` dict holds the evaluation of W₀).

Checkpoints are saved at every power of two, every ``every`` steps and at the last step
(:func:`checkpoint_steps`), never at step 0: like real trainers, W₀ is the base model directory.
A directory is written under a temporary name and renamed, so a crash never leaves half of one.

>>> checkpoint_steps(20, every=8)
[1, 2, 4, 8, 16, 20]
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..synthetic import quiet_saving

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}



def checkpoint_steps(total: int, every: int = 0) -> list[int]:
    """Powers of two ≤ total, multiples of ``every`` (0: none) and ``total`` itself, sorted."""
    steps = {total}
    p = 1
    while p <= total:
        steps.add(p)
        p *= 2
    if every > 0:
        steps.update(range(every, total + 1, every))
    return sorted(s for s in steps if s >= 1)


def torch_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown checkpoint dtype {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


def save_model_dir(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path,
                   dtype: str = "float32", extra: dict[str, object] | None = None) -> Path:
    """Write model (cast to ``dtype``; the live model is left alone), tokenizer and ``extra`` JSON files."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # a copy, because casting in place would round the weights training continues from
    with quiet_saving():
        copy.deepcopy(model).to(torch_dtype(dtype)).save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for name, obj in (extra or {}).items():
        (tmp / name).write_text(json.dumps(obj, indent=2) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return path


def trainer_state(global_step: int, max_steps: int, log_history: list[dict]) -> dict:
    return {"global_step": global_step, "max_steps": max_steps, "epoch": None,
            "log_history": [dict(entry) for entry in log_history], "best_metric": None,
            "best_model_checkpoint": None, "is_world_process_zero": True}


def save_checkpoint(run_dir: str | Path, step: int, max_steps: int, model: PreTrainedModel,
                    tokenizer: PreTrainedTokenizerBase, log_history: list[dict],
                    dtype: str = "float32") -> Path:
    state = trainer_state(step, max_steps, log_history)
    return save_model_dir(model, tokenizer, Path(run_dir) / f"checkpoint-{step}", dtype,
                          extra={"trainer_state.json": state})
