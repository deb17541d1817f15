"""Token-level diagnostics of on-policy distillation (Rethinking OPD, arXiv 2604.13016), as pure functions.

Inputs are the student's and the teacher's logits at the same student-visited prefixes,
``student_logits`` and ``teacher_logits`` of shape (B, T, V), and ``mask`` (B, T), 1 on response
positions. With p_t = softmax(student), q_t = softmax(teacher), S^p_t = top-k(p_t), S^q_t = top-k(q_t)
and ∩_t = S^p_t ∩ S^q_t, each figure is a mean over masked positions t of:

- ``overlap_ratio``         |∩_t| / k
- ``overlap_mass_student``  Σ_{v∈∩_t} p_t(v)      (``overlap_mass_teacher``: the same with q_t)
- ``entropy_gap``           |H(q_t) − H(p_t)|, full vocabulary, nats
- ``overlap_advantage``     Σ_{v∈∩_t} p̄_t(v) (ln q̄_t(v) − ln p̄_t(v)) = −KL(p̄_t ‖ q̄_t) ≤ 0, with p̄, q̄
                            renormalised on ∩_t. The paper's "mean over v ∈ ∩" is read as this
                            p̄-weighted sum; ``weighting="uniform"`` divides it by |∩_t| as well.
                            Positions with an empty ∩_t are left out of this mean.
- ``gap_recovery``          (acc_after − acc_before) / (acc_teacher − acc_before)

``convention="thunlp"`` (the ``authors`` preset; thunlp/OPD ``dp_actor.py``) changes two figures:

- ``overlap_mass_*`` is averaged only over positions whose ∩_t is non-empty;
- ``overlap_advantage`` is a mean over all (position t, v ∈ ∩_t) entries of w_t(v)(ln q_t(v) − ln p_t(v)) with the
  raw log-probabilities and w_t = p_t renormalised over the student's top-k S^p_t.

Computed in float64. Ties inside a top-k are broken by ``torch.topk``'s order.

>>> x = torch.randn(2, 3, 20)
>>> d = token_diagnostics(x, x, torch.ones(2, 3), k=4)
>>> round(d["overlap_ratio"], 6), round(d["entropy_gap"], 6), round(d["overlap_advantage"], 6)
(1.0, 0.0, 0.0)
"""

from __future__ import annotations

import math

import torch

K = 16


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    mask = mask.to(values.dtype)
    return float((values * mask).sum() / mask.sum().clamp(min=1))


def _top_k_set(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (B, T, V): the k most probable tokens at each position."""
    idx = probs.topk(min(k, probs.shape[-1]), dim=-1).indices
    return torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, idx, True)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """H = −Σ_v p(v) ln p(v) along the last axis."""
    return -(log_probs.exp() * log_probs).sum(-1)


CONVENTIONS = ("paper", "thunlp")


def token_diagnostics(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                      k: int = K, weighting: str = "p", convention: str | None = None,
                      preset: str | None = None) -> dict[str, float]:
    """All the per-token figures at once (one softmax, one top-k per model).

    ``convention``: ``"paper"`` (Rethinking OPD, arXiv 2604.13016, as read above) or ``"thunlp"`` (the released code);
    default: ``preset``'s (:mod:`opd_dynamics.presets`).
    """
    from .presets import resolve

    convention = resolve("tokens", preset, convention=convention)["convention"]
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    if weighting not in ("p", "uniform"):
        raise ValueError(f"weighting must be 'p' or 'uniform', got {weighting!r}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    log_p = torch.log_softmax(student_logits.double(), -1)
    log_q = torch.log_softmax(teacher_logits.double(), -1)
    p, q = log_p.exp(), log_q.exp()
    top_p = _top_k_set(p, k)
    inter = top_p & _top_k_set(q, k)
    size = inter.sum(-1)
    mass_p, mass_q = (p * inter).sum(-1), (q * inter).sum(-1)
    if convention == "thunlp":
        nonempty = mask * (size > 0)
        w = p / (p * top_p).sum(-1, keepdim=True)  # p renormalised over the student's top-k
        entry = torch.where(inter, w * (log_q - log_p), 0.0).sum(-1)  # summed over v ∈ ∩_t; divided by the entries
        entries = (size.double() * mask).sum()
        return {
            "overlap_ratio": _masked_mean(size.double() / k, mask),
            "overlap_mass_student": _masked_mean(mass_p, nonempty),
            "overlap_mass_teacher": _masked_mean(mass_q, nonempty),
            "entropy_gap": _masked_mean((entropy(log_q) - entropy(log_p)).abs(), mask),
            "overlap_advantage": float((entry * mask).sum() / entries.clamp(min=1)),
        }
    # renormalised on the intersection: ln p̄ = ln p − ln Σ_∩ p
    log_pbar = log_p - mass_p.clamp(min=1e-300).log()[..., None]
    log_qbar = log_q - mass_q.clamp(min=1e-300).log()[..., None]
    adv = torch.where(inter, log_pbar.exp() * (log_qbar - log_pbar), 0.0).sum(-1)
    if weighting == "uniform":
        adv = adv / size.clamp(min=1)
    return {
        "overlap_ratio": _masked_mean(size.double() / k, mask),
        "overlap_mass_student": _masked_mean(mass_p, mask),
        "overlap_mass_teacher": _masked_mean(mass_q, mask),
        "entropy_gap": _masked_mean((entropy(log_q) - entropy(log_p)).abs(), mask),
        "overlap_advantage": _masked_mean(adv, mask * (size > 0)),
    }


def gap_recovery(acc_after: float, acc_before: float, acc_teacher: float) -> float:
    """Share of the student–teacher accuracy gap closed by training; NaN when there is no gap."""
    gap = acc_teacher - acc_before
    return (acc_after - acc_before) / gap if gap != 0 else math.nan
