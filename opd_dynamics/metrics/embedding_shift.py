"""How far training moves the embeddings of the tokens the model uses (EffOPD arXiv 2605.11739, Fig. 11 / Table 3).

EffOPD compares the input-embedding rows of the tokens that appear in the model's generations before and after
training: a 2-D PCA of both sets together (Fig. 11) and their similarity to the base (Table 3). Here, for the rows
S (token ids given, or every row), with E₀ = W_ref[S] and E_t = W_t[S] (|S| × d):

- ``embedding_cosine``: mean over tokens of cos(E₀ᵢ, E_tᵢ); ``embedding_cosine_chance`` beside it: the same mean
  with each token paired to a *different* token's base row (a cyclic shift of S), the level a shift that lost the
  tokens' identity would give;
- ``embedding_relative_shift``: ‖E_t − E₀‖_F / ‖E₀‖_F;
- ``embedding_pca_similarity``: ‖P₀ᵀP_t‖_F² / k for the top-k principal axes (centred PCA) of E₀ and of E_t, with
  ``embedding_pca_similarity_chance`` = k/d (a uniformly random k-dim subspace);
- ``embedding_pca_displacement``: in the PCA of E₀ and E_t together (the paper's Fig. 11 projection), the RMS move
  of a token between its two points over the RMS spread of the base points (0: no move; 1: as far as the cloud is
  wide);
- ``embedding_tokens``: |S|.

Only embedding matrices (kind ``embed``) give rows. Token ids: ``tokens=PATH`` (a JSON list of ints, or ints
separated by white space) — :func:`used_token_ids` writes them from texts and a tokenizer; empty: every row.
Cost: an |S| × d slice and a d × d eigendecomposition (no decomposition of ΔW).
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import OPDError
from .registry import Output, metric

OUTPUTS = ("embedding_cosine", "embedding_cosine_chance", "embedding_relative_shift", "embedding_pca_similarity",
           "embedding_pca_similarity_chance", "embedding_pca_displacement", "embedding_tokens")


def principal_axes(x: np.ndarray, k: int) -> np.ndarray:
    """Top-k principal axes (d × k, orthonormal) of the rows of ``x`` after centring.

    >>> principal_axes(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.1]]), 1).ravel().round(6).tolist()
    [1.0, 0.0]
    """
    c = x - x.mean(axis=0)
    w, v = np.linalg.eigh(c.T @ c)
    v = v[:, ::-1][:, :k]
    return v * np.where(v[np.abs(v).argmax(axis=0), range(v.shape[1])] < 0, -1.0, 1.0)  # a fixed sign


def joint_pca(e0: np.ndarray, et: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of E₀ and E_t on the top-k principal axes of both sets stacked (EffOPD Fig. 11).

    >>> a, b = joint_pca(np.eye(3), np.eye(3) + 1.0, k=1); a.shape, b.shape
    ((3, 1), (3, 1))
    """
    both = np.vstack([e0, et])
    mean = both.mean(axis=0)
    axes = principal_axes(both, k)
    return (e0 - mean) @ axes, (et - mean) @ axes


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    ok = (na > 0) & (nb > 0)
    return np.where(ok, (a * b).sum(axis=1) / np.where(ok, na * nb, 1.0), np.nan)


def shift_values(e0: np.ndarray, et: np.ndarray, k: int = 2) -> dict[str, float]:
    """Every output row from the two |S| × d row sets (float64).

    >>> e0 = np.random.default_rng(0).standard_normal((50, 8))
    >>> r = shift_values(e0, e0.copy()); r["embedding_cosine"], r["embedding_relative_shift"], r["embedding_pca_similarity"]
    (1.0, 0.0, 1.0)
    """
    e0, et = np.asarray(e0, np.float64), np.asarray(et, np.float64)
    n, d = e0.shape
    k = min(k, d, max(n - 1, 1))
    p0, pt = joint_pca(e0, et, k)
    spread = math.sqrt(((p0 - p0.mean(axis=0)) ** 2).sum(axis=1).mean())
    move = math.sqrt(((pt - p0) ** 2).sum(axis=1).mean())
    base_norm = float(np.linalg.norm(e0))
    return {"embedding_cosine": float(np.nanmean(_cos(e0, et))),
            "embedding_cosine_chance": float(np.nanmean(_cos(np.roll(e0, 1, axis=0), et))) if n > 1 else math.nan,
            "embedding_relative_shift": float(np.linalg.norm(et - e0)) / base_norm if base_norm else math.nan,
            "embedding_pca_similarity": float(((principal_axes(e0, k).T @ principal_axes(et, k)) ** 2).sum() / k),
            "embedding_pca_similarity_chance": k / d,
            "embedding_pca_displacement": move / spread if spread > 0 else math.nan,
            "embedding_tokens": float(n)}


@lru_cache(maxsize=16)
def read_token_ids(path: str) -> tuple[int, ...]:
    """Token ids from a file: a JSON list of ints, or ints separated by white space; sorted, without repeats."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise OPDError(f"embedding_shift: cannot read token ids from {path}: {e.strerror}",
                       hint="tokens=PATH names a JSON list of token ids (used_token_ids writes one)") from None
    try:
        ids = json.loads(text) if text.lstrip().startswith("[") else [int(t) for t in text.split()]
        ids = sorted({int(i) for i in ids})
    except (ValueError, TypeError):
        raise OPDError(f"embedding_shift: {path} does not hold token ids",
                       hint="write a JSON list of ints, e.g. [17, 42, 99]") from None
    if not ids or ids[0] < 0:
        raise OPDError(f"embedding_shift: {path} holds no token ids or a negative one", hint="list ids ≥ 0")
    return tuple(ids)


def used_token_ids(texts, tokenizer, path: str | Path | None = None) -> list[int]:
    """The sorted unique ids ``tokenizer`` gives ``texts`` (e.g. the model's rollouts); written to ``path`` as JSON.

    >>> class Tok:  # any callable returning {"input_ids": [[...], ...]}
    ...     def __call__(self, texts, add_special_tokens=False): return {"input_ids": [[ord(c) for c in t] for t in texts]}
    >>> used_token_ids(["ab", "ba!"], Tok())
    [33, 97, 98]
    """
    ids = sorted({int(i) for row in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in row})
    if path is not None:
        Path(path).write_text(json.dumps(ids))
    return ids


def rows_of(view, ids: tuple[int, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """(E₀, E_t) of the view's embedding matrix, restricted to ``ids`` (all rows when None), float64."""
    w0, delta = view.before, view.delta
    if ids is not None:
        if ids[-1] >= w0.shape[0]:
            raise OPDError(f"embedding_shift: token id {ids[-1]} is beyond {view.part.name}'s {w0.shape[0]} rows",
                           hint="give ids of this model's tokenizer")
        index = torch.as_tensor(ids, dtype=torch.long)
        w0, delta = w0[index], delta[index]
    e0 = w0.to(torch.float64)
    return e0.numpy(), (e0 + delta.to(torch.float64)).numpy()


_INF = float("inf")


@metric("embedding_shift", family="embedding", paper="EffOPD Fig. 11 / Table 3",
        outputs=(Output("embedding_cosine", "cosine of used tokens' embeddings to W₀", "", (-1, 1)),
                 Output("embedding_cosine_chance", "cosine to another token's W₀ row", "", (-1, 1)),
                 Output("embedding_relative_shift", "‖ΔE‖_F / ‖E₀‖_F", "", (0, _INF)),
                 Output("embedding_pca_similarity", "top-k PCA subspace similarity to W₀ (%)", "%", (0, 1)),
                 Output("embedding_pca_similarity_chance", "chance k/d (%)", "%", (0, 1)),
                 Output("embedding_pca_displacement", "joint-PCA move / spread", "", (0, _INF)),
                 Output("embedding_tokens", "tokens compared", "", (0, _INF))))
def embedding_shift(tokens: str = "", k: int = 2, kinds: str = "embed"):
    """Similarity of the used tokens' embeddings to the base: cosine, relative shift, PCA subspace and displacement.

    ``tokens``: a file of token ids (JSON list) — the tokens of a corpus or of rollouts; empty: every row.
    ``k``: principal axes compared (2, as the paper's figure). ``kinds``: the matrices whose rows are tokens,
    comma-separated (``embed``, default; ``embed,lm_head`` adds an untied output head; ``*`` every matrix).
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    ids = read_token_ids(tokens) if tokens else None
    wanted = {x.strip() for x in kinds.split(",") if x.strip()}

    def compute(view):
        if "*" not in wanted and view.part.kind not in wanted:
            return {}
        return shift_values(*rows_of(view, ids), k=k)

    return compute
