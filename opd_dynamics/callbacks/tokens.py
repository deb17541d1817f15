"""``TokenDiagnosticsCallback``: the Rethinking-OPD token diagnostics of student vs teacher, during training.

On a fixed probe batch (``input_ids``, ``attention_mask`` and optionally ``mask``: 1 on the response positions
to score, default the attention mask), both models' next-token distributions are compared with
:func:`opd_dynamics.diagnostics.token_diagnostics` — top-k overlap ratio, overlap mass (student's and
teacher's), entropy gap and overlap advantage — and logged as ``tokens/<name>`` with the cost
(``tokens/cost_s``, ``tokens/cost_share``). Cost: one forward pass of each model on the probe batch.

The teacher is ``teacher=`` or, in TRL's ``GKDTrainer`` (on-policy distillation with ``lmbda=1``), the trainer's
``teacher_model``. A teacher whose vocabulary is padded larger is compared on the student's vocabulary.
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import OPDError
from ..diagnostics import K, token_diagnostics
from ._logging import Measured


class TokenDiagnosticsCallback(Measured):
    """Log top-k overlap, overlap mass, entropy gap and overlap advantage on a probe batch every ``every`` steps.

    Args:
        probe: ``{"input_ids": (B, T), "attention_mask": (B, T)[, "mask": (B, T)]}`` (a tokenizer's output works).
        teacher: the teacher model (default: the trainer's ``teacher_model``).
        every: measure every N optimizer steps; None measures at each checkpoint save.
        k: the top-k of the overlap figures.
        max_share: skip measurements while their total time exceeds this share of the training time.
        preset: ``paper`` (default) or ``authors`` (thunlp/OPD's overlap mass and overlap advantage; docs/fidelity.md).
    """

    def __init__(self, probe: Mapping[str, torch.Tensor], *, teacher: torch.nn.Module | None = None,
                 every: int | None = None, k: int = K, prefix: str = "tokens/", max_share: float | None = None,
                 preset: str | None = None):
        super().__init__(every=every, prefix=prefix, max_share=max_share)
        if "input_ids" not in probe:
            raise OPDError("TokenDiagnosticsCallback: the probe batch has no input_ids",
                           hint="pass a tokenizer's output: tok(texts, return_tensors='pt', padding=True)")
        from ..presets import check

        self.probe, self.teacher, self.k, self.preset = dict(probe), teacher, k, check(preset)

    def start(self, model) -> None:
        if self.teacher is None and self.trainer is not None:
            self.teacher = getattr(self.trainer, "teacher_model", None)

    @torch.no_grad()
    def measure(self, model, step: int) -> dict[str, float]:
        if self.teacher is None:
            self.start(model)
            if self.teacher is None:
                raise OPDError("TokenDiagnosticsCallback: no teacher model",
                               hint="pass teacher=..., or use it in a trainer that has teacher_model (TRL GKDTrainer)")
        device = next(model.parameters()).device
        ids = self.probe["input_ids"].to(device)
        attn = self.probe.get("attention_mask", torch.ones_like(ids)).to(device)
        mask = self.probe.get("mask", attn).to(device)
        logits = []
        for m in (model, self.teacher):
            was = m.training
            m.eval()
            try:
                logits.append(m(input_ids=ids.to(next(m.parameters()).device),
                                attention_mask=attn.to(next(m.parameters()).device)).logits.to(device))
            finally:
                m.train(was)
        vocab = min(x.shape[-1] for x in logits)
        d = token_diagnostics(logits[0][..., :vocab], logits[1][..., :vocab], mask, k=self.k, preset=self.preset)
        return {f"{self.prefix}{name}": value for name, value in d.items()}
