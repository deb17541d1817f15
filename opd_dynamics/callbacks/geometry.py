"""``GeometryCallback``: update geometry of the live model against W₀, logged beside the loss.

At each save (or every ``every`` steps) every selected matrix's ΔW = W_t − W₀ is formed on the training device
from the parameters in memory — no checkpoint is written or read — and the chosen metric plug-ins run on the same
:class:`~opd_dynamics.view.ModuleView` the offline engine builds, so the numbers are the ones ``analyze`` gives for
a checkpoint saved at that step (tests hold them to it). Logged, with ``prefix`` (default ``geometry/``):

- ``geometry/<metric>``: the unweighted mean over the selected matrices (EffOPD Table 1 layout with the default
  ``kind=body`` selection);
- ``geometry/<metric>/<kind>``: the mean per module kind (``attn_q`` … ``mlp_down``);
- ``geometry/<metric>/layer_<L>``: the mean per layer (``per_layer=True``);
- ``geometry/cost_s``, ``geometry/cost_share``: see :mod:`opd_dynamics.callbacks._logging`.

Memory: one copy of the selected W₀ parameters on ``base_device`` (default: where each parameter lives), plus ΔW
and one decomposition of the largest selected matrix while measuring. Trajectory metrics (``alignment_to_final``)
need the final step and are refused; run ``analyze`` on the saved checkpoints for them.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import torch

from .. import linalg
from ..errors import OPDError
from ..metrics.registry import Spec
from ..naming import Part, parts
from ..select import Selector
from ..view import ModuleView
from ._logging import Measured

DEFAULT = ("spectral_norm", "spectral_ratio", "effective_rank", "stable_rank", "relative_update")


def _slice(t: torch.Tensor, p: Part) -> torch.Tensor:
    """The part of a stored tensor a module view sees (fused tensors are split, (in, out) layouts transposed)."""
    t = t if p.index is None else t[p.index]  # one expert of a fused [E, ...] tensor
    if t.ndim != 2:
        return t
    t = t.T if p.transpose else t
    return t if p.rows is None else t[p.rows[0]:p.rows[1]]


class GeometryCallback(Measured):
    """Log update-geometry metrics of the live model against W₀ at each save or every ``every`` steps.

    Args:
        metrics: metric names or specs (``"alignment_to_final"``-style trajectory metrics are refused).
        every: measure every N optimizer steps; None measures at each checkpoint save (HF/TRL trainers).
        select: ``--select`` clauses (default ``kind=body``: attention + MLP matrices).
        per_layer: also log the mean per layer.
        prefix: name prefix of every logged value.
        spectrum_method: as in ``analyze``.
        base: W₀ as a ``{name: tensor}`` state dict; default: the parameters when training begins.
        base_device: where the W₀ copy lives (default: beside each parameter).
        max_share: skip measurements while their total time exceeds this share of the training time.
    """

    def __init__(self, metrics: Sequence[str | Spec] = DEFAULT, *, every: int | None = None,
                 select: Sequence[str] = ("kind=body",), per_layer: bool = True, prefix: str = "geometry/",
                 spectrum_method: str = "gram", base: dict[str, torch.Tensor] | None = None,
                 base_device: str | None = None, max_share: float | None = None):
        super().__init__(every=every, prefix=prefix, max_share=max_share)
        self.specs = [m if isinstance(m, Spec) else Spec.parse(m) for m in metrics]
        self.built = [(s, s.info, s.build()) for s in self.specs]
        traj = [s.name for s, info, _ in self.built if info.trajectory]
        if traj:
            raise OPDError(f"{traj[0]} needs the final step and cannot be logged during training",
                           hint="leave it out here; run `opd-dynamics analyze` on the saved checkpoints for it")
        self.keep_after = any(info.needs_after for _, info, _ in self.built)
        self.selector = Selector.parse(list(select))
        self.per_layer, self.method = per_layer, spectrum_method
        self.base_device = None if base_device is None else torch.device(base_device)
        self._given_base = base
        self.base: dict[str, torch.Tensor] | None = None
        self.parts: dict[str, tuple[Part, ...]] = {}
        self._module_cache: dict[str, dict] = defaultdict(dict)

    @torch.no_grad()
    def start(self, model) -> None:
        """Remember W₀ of the selected parameters (call before the first step in the reference loop)."""
        config = model.config.to_dict() if hasattr(model, "config") else {}
        self.base, self.parts = {}, {}
        for name, p in model.named_parameters():
            if not p.is_floating_point() or p.numel() == 0:
                continue
            chosen = tuple(x for x in parts(name, tuple(p.shape), config) if self.selector.matches(x, p.ndim))
            if not chosen:
                continue
            w0 = self._given_base[name] if self._given_base is not None else p.detach()
            self.base[name] = w0.to(self.base_device or p.device, copy=True)
            self.parts[name] = chosen
        self._module_cache.clear()
        if not self.base:
            raise OPDError("GeometryCallback: no parameter matches the selection",
                           hint=f"check select={self.selector.to_json()}")

    @torch.no_grad()
    def rows(self, model, step: int) -> list[tuple]:
        """Long-table rows ``(run, step, ref_step, module, layer, expert, kind, metric, value)`` of the live model."""
        if self.base is None:
            self.start(model)  # first use without a training-begin event: W₀ is now
        params = dict(model.named_parameters())
        out = []
        for name, w0 in self.base.items():
            w = params[name].detach()
            w0 = w0.to(w.device)
            for part in self.parts[name]:
                ref, now = _slice(w0, part), _slice(w, part)
                view = ModuleView("live", part, step, 0, linalg.difference(now, ref), ref,
                                  now if self.keep_after else None, self.method, self._module_cache[part.name])
                for spec, info, m in self.built:
                    if info.matrix and not view.is_matrix:
                        continue
                    value = m(view)
                    values = value if isinstance(value, dict) else {info.outputs[0]: value}
                    out.extend(("live", step, 0, part.name, part.layer, part.expert, part.kind, k, float(v))
                               for k, v in values.items())
                del view
        return out

    def measure(self, model, step: int) -> dict[str, float]:
        by_metric, by_kind, by_layer = defaultdict(list), defaultdict(list), defaultdict(list)
        for *_, layer, _expert, kind, metric, value in self.rows(model, step):
            if math.isnan(value):
                continue  # a zero update: left out of the means, as in table1
            by_metric[metric].append(value)
            by_kind[(metric, kind)].append(value)
            if layer is not None:
                by_layer[(metric, layer)].append(value)
        logs = {f"{self.prefix}{m}": sum(v) / len(v) for m, v in by_metric.items()}
        logs.update({f"{self.prefix}{m}/{k}": sum(v) / len(v) for (m, k), v in sorted(by_kind.items())})
        if self.per_layer:
            logs.update({f"{self.prefix}{m}/layer_{layer:02d}": sum(v) / len(v)
                         for (m, layer), v in sorted(by_layer.items())})
        return logs
