"""Sliding window (EffOPD appendix): restore W₀ + ΔW_T only inside a window of layers, MLP or attention only.

Paper (1-based): W_l = {i : max(1, l−h) ≤ i ≤ min(L, l+h)}, centres l = 1 … L−h, h = 8. Here layers are
**0-based** (as everywhere in opd-dynamics): centre c = l − 1 ∈ {0 … L−h−1}, window [max(0, c−h), min(L−1, c+h)];
add 1 to compare with the paper. MLP variant: gate/up/down of the window's layers get W₀ + ΔW_T, every other tensor
(all attention included) stays at W₀; attention variant: q/k/v/o (and q_norm/k_norm where present) likewise.
A model with fewer layers than the paper's 28 gets a proportionally smaller h (round(8·L/28), at least 1),
recorded in the manifest's settings and in each plan's note. The table also holds the final step's per-module
``frobenius`` rows of the attention and MLP matrices, for the bars of the figure.
"""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..analyze import analyze
from ..edits import EditSpec
from ..errors import OPDError
from ..plans import Plan, Rule
from ._common import execute, prepare, references

FAMILIES = {"mlp": ("kind=mlp_*",), "attn": ("kind=attn_*",)}
PAPER_LAYERS, PAPER_H = 28, 8


def default_half_width(n_layers: int) -> int:
    """h = 8 for models with ≥ 28 layers (the paper's), else round(8·L/28), at least 1.

    >>> default_half_width(28), default_half_width(8), default_half_width(4)
    (8, 2, 1)
    """
    return PAPER_H if n_layers >= PAPER_LAYERS else max(1, round(PAPER_H * n_layers / PAPER_LAYERS))


def window(centre: int, h: int, n_layers: int) -> tuple[int, int]:
    """0-based inclusive layer range of the window around 0-based ``centre``; a centre outside the model is an error."""
    if not 0 <= centre < n_layers:
        raise OPDError(f"sliding window centre {centre} is outside the model's layers 0..{n_layers - 1} (0-based)",
                       hint=f"choose centres in 0..{n_layers - 1}")
    return max(0, centre - h), min(n_layers - 1, centre + h)


def plans(n_layers: int, h: int, centres: Sequence[int], families: Sequence[str], qk_norm: bool) -> list[Plan]:
    out = []
    for fam in families:
        if fam not in FAMILIES:
            raise OPDError(f"sliding window family {fam!r} not understood", hint="use mlp and/or attn")
        for c in centres:
            lo, hi = window(c, h, n_layers)
            rules = [Rule((*FAMILIES[fam], f"layer={lo}-{hi}"), EditSpec("identity"))]
            if fam == "attn" and qk_norm:
                rules.append(Rule((r"name=\.self_attn\.(q|k)_norm\.", f"layer={lo}-{hi}"), EditSpec("identity")))
            out.append(Plan("sliding_window", fam, float(c), tuple(rules), layer=c,
                            note=f"layers {lo}-{hi} (0-based) = {lo + 1}-{hi + 1} (1-based), h={h}"))
    return out


def sliding_window(run, *, h: int | None = None, centres: Sequence[int] | None = None,
                   families: Sequence[str] = ("mlp", "attn"), out=None, **setup) -> pd.DataFrame:
    """Score of W₀ + ΔW_T restored inside a sliding window of layers (MLP-only and attention-only).

    Args:
        run: the run directory. h: half-width (default: 8 scaled to the model's depth). centres: 0-based window
            centres (default: the paper's 1 … L−h, i.e. 0 … L−h−1). ``setup``: see :func:`~._common.prepare`.
    """
    s = prepare(run, **setup)
    L = s.engine.n_layers
    h = default_half_width(L) if h is None else int(h)
    if centres is None:
        centres = list(range(0, L - h))
        if not centres:
            raise OPDError(f"h={h} leaves no window centre in a {L}-layer model (centres 1..L-h, 1-based)",
                           hint=f"pass a smaller h (< {L})")
    qk = any("q_norm" in n for n in s.engine.base.keys())
    ps = references("sliding_window") + plans(L, h, list(centres), families, qk)
    extra = pd.concat([analyze([r.root], base=s.engine.base.path, names=[r.name], metrics=["frobenius"],
                               steps=[r.final_step], select=["kind=body"], progress=False) for r in s.runs])
    settings = {"h": h, "centres_0based": list(centres), "families": list(families), "layers": L,
                "layer_index": "0-based (paper: 1-based)"}
    return execute(s, "sliding_window", {r.name: ps for r in s.runs}, settings=settings, extra=extra, out=out)
