"""Embedding revert (EffOPD Fig. 2a): the final model with its embeddings put back to W₀ (and the converse).

Variants: ``embeddings at W0`` = every module at W_T except ``kind=embed`` (a tied lm_head follows the embedding,
an untied one is reverted too only with ``include_lm_head``); ``only embeddings`` = W₀ with just the embeddings
at W_T. x is NaN: the figure draws bars.
"""
from __future__ import annotations

import pandas as pd

from ..edits import EditSpec
from ..plans import Plan, Rule
from ._common import execute, prepare, references


def plans(include_lm_head: bool = False) -> list[Plan]:
    kinds = "kind=embed,lm_head" if include_lm_head else "kind=embed"
    return [Plan("embedding_revert", "embeddings at W0", None,
                 (Rule((kinds,), EditSpec("revert")), Rule((), EditSpec("identity")))),
            Plan("embedding_revert", "only embeddings", None, (Rule((kinds,), EditSpec("identity")),))]


def embedding_revert(run, *, include_lm_head: bool = False, out=None, **setup) -> pd.DataFrame:
    """Score of the final model with embeddings reverted to W₀, and of W₀ with only the final embeddings."""
    s = prepare(run, **setup)
    if include_lm_head and not any(n.startswith("lm_head") for n in s.engine.base.keys()):
        include_lm_head = False  # tied: the head is the embedding
    ps = references("embedding_revert") + plans(include_lm_head)
    return execute(s, "embedding_revert", {r.name: ps for r in s.runs},
                   settings={"include_lm_head": include_lm_head}, out=out)
