"""What both callbacks share: when to measure, how long it took against a training step, and how to log.

Cost: the wall time of a measurement over the mean wall time of the training steps since the previous one
(``cost_share``: 0.25 means one measurement costs a quarter of a step). ``max_share`` bounds the amortised
overhead: a measurement is skipped while the callback's total time exceeds ``max_share`` × total training time.

Logging: ``transformers.Trainer.log`` of the trainer that runs the callback (found on the call stack when training
begins, or given with ``attach(trainer)``), called as the base class's method so TRL trainers' own metric buffers
are left alone. Without a trainer (the reference loop) the values go into the step's log dict.
"""
from __future__ import annotations

import inspect
import time
import warnings

import torch
from transformers import TrainerCallback


def find_trainer():
    """The ``transformers.Trainer`` whose method is on the call stack, or None."""
    from transformers import Trainer

    frame = inspect.currentframe()
    try:
        while frame is not None:
            obj = frame.f_locals.get("self")
            if isinstance(obj, Trainer):
                return obj
            frame = frame.f_back
    finally:
        del frame
    return None


class Measured(TrainerCallback):
    """Base of the callbacks: schedule (``every`` N steps, or at each save), cost accounting, logging."""

    def __init__(self, *, every: int | None, prefix: str, max_share: float | None):
        if every is not None and every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every}")
        self.every, self.prefix, self.max_share = every, prefix, max_share
        self.trainer = None
        self.cost = 0.0            # seconds spent measuring, in total
        self.train_time = 0.0      # seconds of training steps seen, in total
        self._window: list[float] = []  # step times since the last measurement
        self._t0: float | None = None
        self.history: list[dict] = []   # everything logged, also without a trainer

    def attach(self, trainer) -> "Measured":
        """Log through this trainer (otherwise the one found on the call stack when training begins)."""
        self.trainer = trainer
        return self

    # -- subclasses ---------------------------------------------------------------------------------
    def start(self, model) -> None:
        """Called before the first step (W₀ snapshot, probe on the right device)."""

    def measure(self, model, step: int) -> dict[str, float]:
        raise NotImplementedError

    # -- the schedule ----------------------------------------------------------------------------------
    def _due(self, step: int) -> bool:
        if self.max_share is not None and self.cost > self.max_share * self.train_time:
            return False
        return self.every is not None and step % self.every == 0

    def _run(self, model, step: int) -> dict[str, float]:
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        t = time.perf_counter()
        logs = self.measure(model, step)
        sync()
        took = time.perf_counter() - t
        self.cost += took
        mean_step = sum(self._window) / len(self._window) if self._window else float("nan")
        logs[f"{self.prefix}cost_s"] = took
        logs[f"{self.prefix}cost_share"] = took / mean_step if self._window else float("nan")
        self._window = []
        self.history.append({"step": step, **logs})
        return logs

    def _step_time(self) -> None:
        if self._t0 is not None:
            dt = time.perf_counter() - self._t0
            self.train_time += dt
            self._window.append(dt)

    def _log(self, logs: dict[str, float]) -> None:
        if self.trainer is None:
            warnings.warn(f"{type(self).__name__}: no trainer found to log through; values kept in .history",
                          stacklevel=3)
            return
        from transformers import Trainer

        Trainer.log(self.trainer, dict(logs))

    # -- transformers.TrainerCallback --------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.trainer is None:
            self.trainer = find_trainer()
        self.start(model)

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._step_time()
        if self._due(state.global_step):
            self._log(self._run(model, state.global_step))
        return control

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.every is None and (self.max_share is None or self.cost <= self.max_share * self.train_time):
            self._log(self._run(model, state.global_step))
        return control

    # -- the reference trainer's step hook: hook(model, step, log) ------------------------------------------
    def __call__(self, model, step: int, log: dict) -> None:
        now = time.perf_counter()
        if self._t0 is not None:
            self.train_time += now - self._t0
            self._window.append(now - self._t0)
        if self._due(step):
            log.update(self._run(model, step))
        self._t0 = time.perf_counter()
