"""Temporary in-place edits of a live model's tensors, undone bit for bit.

Every in-place weight edit of the project goes through :func:`patched`: the intervention engine
(:mod:`opd_dynamics.interventions`), EffOPD's candidate search and its offline replay (:mod:`opd_dynamics.effopd`).
A tensor's original is copied the first time it is written, and copied back when the ``with`` block ends —
normally or by an exception (``try/finally``, as TransformerLens undoes its hooks) — so the model holds its
original bits again. :meth:`Patch.commit` keeps the edits instead (EffOPD leaves the model at the accepted
candidate). Extra memory: one copy of each tensor written.

>>> lin = torch.nn.Linear(3, 2)
>>> before = lin.weight.detach().clone()
>>> with patched({"weight": lin.weight}) as patch:
...     patch.write("weight", patch.original("weight") * 2)
...     torch.equal(lin.weight, before * 2)
True
>>> torch.equal(lin.weight, before), patch.names
(True, [])
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch

from .errors import OPDError

__all__ = ["Patch", "patched"]


class Patch:
    """Writes into named live tensors, remembering each one's original on its first write."""

    def __init__(self, params: Mapping[str, torch.Tensor]):
        self.params = dict(params)
        self.originals: dict[str, torch.Tensor] = {}

    @property
    def names(self) -> list[str]:
        """The tensors written since the last restore or commit, in first-write order."""
        return list(self.originals)

    def _param(self, name: str) -> torch.Tensor:
        try:
            return self.params[name]
        except KeyError:
            raise OPDError(f"cannot patch {name!r}: the model has no such tensor",
                           hint="the checkpoints and the model must share tensor names") from None

    def original(self, name: str) -> torch.Tensor:
        """``name`` as it was before this patch first wrote it (copied now if not yet written)."""
        if name not in self.originals:
            self.originals[name] = self._param(name).detach().clone()
        return self.originals[name]

    @torch.no_grad()
    def write(self, name: str, value: torch.Tensor) -> None:
        """Copy ``value`` into the live tensor ``name`` (cast to its dtype and device, as ``Tensor.copy_`` does)."""
        self.original(name)
        self._param(name).copy_(value)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy every original back, bit for bit; the patch is then empty."""
        for name, orig in self.originals.items():
            self.params[name].copy_(orig)
        self.originals.clear()

    def commit(self) -> None:
        """Keep the current edits: forget the originals, so leaving the ``with`` block restores nothing."""
        self.originals.clear()


@contextmanager
def patched(params: Mapping[str, torch.Tensor]) -> Iterator[Patch]:
    """``with patched(dict(model.named_parameters())) as patch:`` — edits written through ``patch`` are undone on
    exit, also when the block raises (unless :meth:`Patch.commit` kept them)."""
    patch = Patch(params)
    try:
        yield patch
    finally:
        patch.restore()
