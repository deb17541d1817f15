"""The EffOPD extrapolation search (EffOPD, arXiv 2605.11739 §4; docs/effopd.md) — the one implementation replay and online share.

At a power-of-two step t = 2ⁿ, with Δ_n = W_{2ⁿ} − W_{2ⁿ⁻¹} (the reference being the weights *after* the
previous extrapolation, as in the authors' code), try W̃_k = W_{2ⁿ} + 2k·Δ_n for k = 1 … 5 in order; accept a
candidate whose score is ≥ the best so far (``rule=">="``, the paper; ``">"`` is the authors' code), stop at
the first failure. By default (``params="weights"``, the paper's text) only attention and MLP weight matrices are
extrapolated — embeddings, lm_head and norms are not. ``params="authors"`` copies the released code's substring
match (``_should_modify_param`` in caiyuchen-ustc/EffOPD ``verl/workers/fsdp_workers.py``): every parameter whose
lower-cased name contains one of :data:`AUTHORS_KEYWORDS`, which also takes attention/MLP biases, q/k norms,
``post_attention_layernorm`` (it contains "attention") and the MoE router ``mlp.gate``. ``preset="authors"``
(:mod:`opd_dynamics.presets`) selects both ``rule=">"`` and ``params="authors"``.

>>> scores = {0: 0.5, 1: 0.6, 2: 0.6, 3: 0.4}
>>> r = search(lambda k: scores[k], ks=(1, 2, 3, 4, 5))
>>> r.accepted_k, r.scores
(2, [0.5, 0.6, 0.6, 0.4])
>>> search(lambda k: scores[k], ks=(1, 2, 3), rule=">").accepted_k
1
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..errors import OPDError
from ..naming import classify, is_body
from ..patching import patched

RULES = (">=", ">")
PARAMS = ("weights", "weights+bias", "authors")
AUTHORS_KEYWORDS = ("attn", "self_attn", "attention", "q_proj", "k_proj", "v_proj", "o_proj",
                    "mlp", "feed_forward", "ffn", "gate_proj", "up_proj", "down_proj")
"""The released code's keywords, matched as substrings of the lower-cased parameter name."""
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


def extrapolated_names(names, *, include_bias: bool = False, params: str | None = None) -> list[str]:
    """Parameter names EffOPD extrapolates.

    ``params="weights"`` (default): attention and MLP weight matrices; ``"weights+bias"`` (or ``include_bias``):
    and their biases; ``"authors"``: the released code's substring match (:data:`AUTHORS_KEYWORDS`).

    >>> names = ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.bias",
    ...          "model.layers.0.self_attn.q_norm.weight", "model.layers.0.post_attention_layernorm.weight",
    ...          "model.layers.0.input_layernorm.weight", "model.layers.0.mlp.gate.weight", "model.norm.weight"]
    >>> [n.split("layers.0.")[-1] for n in extrapolated_names(names)]
    ['self_attn.q_proj.weight']
    >>> [n.split("layers.0.")[-1] for n in extrapolated_names(names, params="authors")]
    ['self_attn.q_proj.weight', 'self_attn.q_proj.bias', 'self_attn.q_norm.weight', 'post_attention_layernorm.weight', 'mlp.gate.weight']
    """
    params = params or ("weights+bias" if include_bias else "weights")
    if params not in PARAMS:
        raise OPDError(f"params={params!r} not understood",
                       hint="use weights (paper), weights+bias, or authors (the released code's name match)")
    if params == "authors":
        return [n for n in names if any(k in n.lower() for k in AUTHORS_KEYWORDS)]
    include_bias = params == "weights+bias"
    out = []
    for n in names:
        kind, _layout = classify(n)
        if is_body(kind) or (include_bias and kind == "bias" and any(s in n for s in ("attn", "mlp"))):
            out.append(n)
    return out


def search_model(model: torch.nn.Module, delta: dict[str, torch.Tensor], score: Callable[[torch.nn.Module], float],
                 *, ks=DEFAULT_KS, rule: str = ">=", step: int = 0, keep: bool = True) -> SearchResult:
    """Search on a live model whose weights are W_{2ⁿ}; leave it at the accepted candidate (``keep``) or restore.

    ``delta`` maps parameter names to Δ_n (any device/dtype; cast per parameter). Every candidate is built from the
    kept W_{2ⁿ} (:func:`opd_dynamics.patching.patched`), so the accepted one is exactly W_{2ⁿ} + 2k·Δ (no rounding
    accumulates across candidates), and an exception in ``score`` leaves the model bitwise at W_{2ⁿ}.
    """
    params = dict(model.named_parameters())
    missing = sorted(set(delta) - set(params))
    if missing:
        raise OPDError(f"extrapolation names {missing[0]!r} that the model does not have",
                       hint="the checkpoints and the model must share parameter names")
    with patched({n: params[n] for n in delta}) as patch:
        def move(c: float) -> None:  # W ← W_{2ⁿ} + c·Δ
            for n, d in delta.items():
                p = patch.params[n]
                patch.write(n, patch.original(n) + c * d.to(p.device, p.dtype))

        def score_at(k: int) -> float:
            move(2 * k)
            return float(score(model))

        result = search(score_at, ks=ks, rule=rule, step=step)
        if keep:
            move(2 * result.accepted_k)
            patch.commit()
    return result
