"""The EffOPD extrapolation search (EffOPD, arXiv 2605.11739 §4; docs/effopd.md) — the one implementation replay and online share.

At a power-of-two step t = 2ⁿ, with Δ_n = W_{2ⁿ} − W_{2ⁿ⁻¹} (the reference being the weights *after* the
previous extrapolation, as in the authors' code), try W̃_k = W_{2ⁿ} + 2k·Δ_n for k = 1 … 5 in order; accept a
candidate whose score is ≥ the best so far (``rule=">="``, the paper; ``">"`` is the authors' code), stop at
the first failure. Only attention and MLP weight matrices are extrapolated — embeddings, lm_head and norms
are not (the authors' name matching also touched some norms; that accident is not copied).

>>> scores = {0: 0.5, 1: 0.6, 2: 0.6, 3: 0.4}
>>> r = search(lambda k: scores[k], ks=(1, 2, 3, 4, 5))
>>> r.accepted_k, r.scores
(2, [0.5, 0.6, 0.6, 0.4])
>>> search(lambda k: scores[k], ks=(1, 2, 3), rule=">").accepted_k
1
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch

from ..errors import OPDError
from ..naming import classify

RULES = (">=", ">")
DEFAULT_KS = (1, 2, 3, 4, 5)


def is_power_of_two(step: int) -> bool:
    return step >= 1 and step & (step - 1) == 0


@dataclass
class SearchResult:
    """One search: ``scores[0]`` is W_{2ⁿ} itself, ``scores[i]`` the i-th candidate tried (k = ks[i-1])."""

    step: int = 0
    ks: tuple[int, ...] = DEFAULT_KS
    scores: list[float] = field(default_factory=list)
    accepted_k: int = 0
    rule: str = ">="
    best: float = float("nan")

    @property
    def multiplier(self) -> int:
        """The accepted extrapolation 2k (0 = plain OPD)."""
        return 2 * self.accepted_k

    def to_json(self) -> dict:
        return {**asdict(self), "ks": list(self.ks), "multiplier": self.multiplier}


def search(score_at: Callable[[int], float], *, ks=DEFAULT_KS, rule: str = ">=", step: int = 0) -> SearchResult:
    """Run the acceptance loop over ``score_at(k)`` (k = 0 scores the unextrapolated weights)."""
    if rule not in RULES:
        raise OPDError(f"acceptance rule {rule!r} not understood", hint="use >= (paper) or > (authors' code)")
    ks = tuple(ks)
    best = score_at(0)
    result = SearchResult(step, ks, [best], 0, rule, best)
    for k in ks:
        s = score_at(k)
        result.scores.append(s)
        if s >= best if rule == ">=" else s > best:
            best, result.accepted_k, result.best = s, k, s
        else:
            break
    return result


def extrapolated_names(names, *, include_bias: bool = False) -> list[str]:
    """Parameter names EffOPD extrapolates: attention and MLP weight matrices (and their biases if asked)."""
    out = []
    for n in names:
        kind, _layout = classify(n)
        body = kind.startswith(("attn_", "mlp_"))
        if body or (include_bias and kind == "bias" and any(s in n for s in ("attn", "mlp"))):
            out.append(n)
    return out


class Extrapolator:
    """Moves a live model's selected parameters along Δ in place: W ← W_cur + c·Δ, and back exactly.

    ``W_cur`` (the weights at the search step) is kept so every candidate is built from it, and the
    accepted one is exactly W_cur + 2k·Δ (no accumulation of rounding across candidates).
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], delta: dict[str, torch.Tensor]):
        missing = sorted(set(delta) - set(params))
        if missing:
            raise OPDError(f"extrapolation names {missing[0]!r} that the model does not have",
                           hint="the checkpoints and the model must share parameter names")
        self.params = {n: params[n] for n in delta}
        self.delta = delta
        self.current = {n: p.detach().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def set(self, c: float) -> None:
        for n, p in self.params.items():
            p.copy_(self.current[n] + c * self.delta[n].to(p.device, p.dtype))

    @torch.no_grad()
    def restore(self) -> None:
        for n, p in self.params.items():
            p.copy_(self.current[n])

    @contextmanager
    def trying(self) -> Iterator["Extrapolator"]:
        try:
            yield self
        except BaseException:
            self.restore()
            raise


def search_model(model: torch.nn.Module, delta: dict[str, torch.Tensor], score: Callable[[torch.nn.Module], float],
                 *, ks=DEFAULT_KS, rule: str = ">=", step: int = 0, keep: bool = True) -> SearchResult:
    """Search on a live model whose weights are W_{2ⁿ}; leave it at the accepted candidate (``keep``) or restore.

    ``delta`` maps parameter names to Δ_n (any device/dtype; cast per parameter).
    """
    ex = Extrapolator(dict(model.named_parameters()), delta)
    with ex.trying():
        def score_at(k: int) -> float:
            ex.set(2 * k)
            return float(score(model))

        result = search(score_at, ks=ks, rule=rule, step=step)
        if keep:
            ex.set(2 * result.accepted_k)
        else:
            ex.restore()
    return result
