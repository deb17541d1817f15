"""EffOPD as a ``transformers.TrainerCallback``: plugs into HF ``Trainer`` and TRL trainers unchanged.

>>> cb = EffOPDCallback(lambda model: 0.0)   # score(model) -> float, higher is better
>>> # Trainer(..., callbacks=[cb]); every search lands in trainer_state.json's log_history

``on_step_end`` runs after the optimizer step and before logging, evaluation and saving, so the extrapolated
weights are what the trainer evaluates, saves and continues from.
"""
from __future__ import annotations

from transformers import TrainerCallback

from .online import EffOPD, log_entry


class EffOPDCallback(TrainerCallback):
    """Run the EffOPD search at every power-of-two global step of a ``transformers.Trainer``."""

    def __init__(self, score, **kwargs):
        self.effopd = EffOPD(score, **kwargs)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.effopd.start(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        result = self.effopd.after_step(model, state.global_step)
        if result is not None:
            state.log_history.append({"step": state.global_step, **log_entry(result)})
        return control
