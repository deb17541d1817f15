"""Module kinds: the values of the long table's ``kind`` column, and the one definition of an attention/MLP matrix.

:mod:`opd_dynamics.naming` maps tensor names to these kinds; :mod:`opd_dynamics.table` validates the column against
them; ``--select kind=body``, Table 1's means (:data:`BODY_KINDS`), EffOPD's extrapolated parameters and the planted
updates of the synthetic runs (:func:`is_body`) share this one definition. Pure data: no imports.
"""
from __future__ import annotations

#: every module kind of the long table (``kind`` column); ``attn_qkv`` and ``mlp_gate_up`` name fused tensors only
KINDS = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down",
         "embed", "lm_head", "norm", "bias", "router", "other")
ATTN_KINDS = KINDS[:4]
MLP_KINDS = KINDS[4:7]
#: the attention and MLP matrices: what EffOPD's Table 1 averages over, ``--select kind=body``, what EffOPD extrapolates
BODY_KINDS = ATTN_KINDS + MLP_KINDS
#: tensor kinds (:func:`classify`) of fused tensors whose parts are body matrices
FUSED_BODY_KINDS = ("attn_qkv", "mlp_gate_up")


def is_body(kind: str) -> bool:
    """True for an attention/MLP matrix kind: a module's (:data:`BODY_KINDS`) or a fused tensor's that splits into them.

    >>> is_body("attn_q"), is_body("attn_qkv"), is_body("norm"), is_body("router")
    (True, True, False, False)
    """
    return kind in BODY_KINDS or kind in FUSED_BODY_KINDS
