"""Every decomposition the toolkit does, with its accuracy stated (and tested in tests/test_linalg.py).

Paths and their errors (σ₁ = largest singular value, ε₆₄ ≈ 2.2e-16, ε₃₂ ≈ 1.2e-7):

- ``gram`` (default): float64 Gram XᵀX (or XXᵀ, the smaller side) accumulated in row blocks, then
  ``eigvalsh``. Eigenvalues carry absolute error ~ε₆₄·σ₁², so σᵢ is exact to ~1e-10·σ₁ for σᵢ ≳ 1e-4·σ₁ and
  σ below ~1e-8·σ₁ are lost in rounding. They are harmless for the metrics, which use σ only up to the
  numerical rank (σ > σ₁·max(m,n)·ε₃₂, SPEC §1). 2–9× faster than ``svdvals`` on CPU.
- ``svd``: ``torch.linalg.svdvals`` in float32 on the tall orientation (a wide matrix is transposed first:
  4–6× faster, same values); error ~ε₃₂·σ₁ absolute.
- ``svd64``: the same in float64; the oracle.
- Top-k singular vectors: subspace iteration on the float64 Gram with ``k + oversample`` columns and
  ``n_iter`` iterations, then Rayleigh–Ritz. Each Gram iteration counts as two power iterations on X, so the
  error in the j-th vector decays like (σ_{k+p+1}/σ_j)^(4·n_iter). The other side's vectors come from
  U = X V Σ⁻¹. ``randomized_svd`` does the same directly on X (Halko et al. 2011) when no Gram is at hand.

Everything works on CUDA tensors too (float64 is used there as well; the Gram keeps it cheap).
"""
from __future__ import annotations

import numpy as np
import torch

EPS32 = float(np.finfo(np.float32).eps)
BLOCK_ELEMS = 1 << 23  # rows per float64 block are chosen so a block holds ~8M elements (64 MB)
METHODS = ("gram", "svd", "svd64")


def gram(x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Float64 Gram matrix of ``x`` on its smaller side, accumulated in blocks to bound memory.

    Returns ``(G, side)`` where ``side == "right"`` means G = XᵀX (n×n, its eigenvectors are right singular
    vectors) and ``"left"`` means G = XXᵀ.

    >>> g, side = gram(torch.tensor([[1., 0.], [0., 2.], [0., 0.]]))
    >>> side, g.diagonal().tolist()
    ('right', [1.0, 4.0])
    """
    m, n = x.shape
    side = "right" if m >= n else "left"
    a = x if side == "right" else x.T  # tall: (big, small)
    small = a.shape[1]
    g = torch.zeros(small, small, dtype=torch.float64, device=x.device)
    rows = max(1, BLOCK_ELEMS // max(small, 1))
    for i in range(0, a.shape[0], rows):
        b = a[i:i + rows].to(torch.float64)
        g.addmm_(b.T, b)
    return g, side


def eigh_spectrum(g: torch.Tensor) -> np.ndarray:
    """Singular values (descending, float64) from a Gram matrix's eigenvalues."""
    lam = torch.linalg.eigvalsh(g).flip(0).clamp_min(0)
    return lam.sqrt().cpu().numpy()


def singular_values(x: torch.Tensor, method: str = "gram") -> np.ndarray:
    """All min(m, n) singular values of ``x``, descending, as float64 numpy.

    >>> singular_values(torch.diag(torch.tensor([3., 1., 2.]))).round(6).tolist()
    [3.0, 2.0, 1.0]
    """
    if method == "gram":
        return eigh_spectrum(gram(x)[0])
    if method not in METHODS:
        raise ValueError(f"unknown spectrum method {method!r}; choose from {METHODS}")
    tall = x if x.shape[0] >= x.shape[1] else x.T
    dtype = torch.float64 if method == "svd64" else torch.float32
    return torch.linalg.svdvals(tall.to(dtype)).to(torch.float64).cpu().numpy()


def numerical_rank(sigma: np.ndarray, shape: tuple[int, int]) -> int:
    """Count of σᵢ > σ₁·max(m, n)·ε₃₂ (SPEC §1)."""
    if sigma.size == 0 or sigma[0] <= 0:
        return 0
    return int(np.count_nonzero(sigma > sigma[0] * max(shape) * EPS32))


def _orth(y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(y)[0]


def gram_top_vectors(g: torch.Tensor, k: int, *, oversample: int = 10, n_iter: int = 8,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of a PSD Gram matrix by subspace iteration: (vectors (s×k), σ = sqrt(λ) (k,)).

    Falls back to a full ``eigh`` when k + oversample covers most of the matrix.
    """
    s = g.shape[0]
    k = min(k, s)
    width = min(s, k + oversample)
    if width * 2 >= s:
        lam, vec = torch.linalg.eigh(g)
        return vec[:, -k:].flip(1), lam[-k:].flip(0).clamp_min(0).sqrt()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = _orth(torch.randn(s, width, generator=gen, dtype=torch.float64).to(g.device))
    for _ in range(n_iter):
        q = _orth(g @ q)
    lam, w = torch.linalg.eigh(q.T @ g @ q)
    vec = q @ w[:, -k:].flip(1)
    return vec, lam[-k:].flip(0).clamp_min(0).sqrt()


def _times(x: torch.Tensor, v: torch.Tensor, transpose: bool) -> torch.Tensor:
    """(X or Xᵀ) @ v in float64, in row blocks of X."""
    if transpose:  # Xᵀ v = Σ_blocks X_bᵀ v_b
        out = torch.zeros(x.shape[1], v.shape[1], dtype=torch.float64, device=x.device)
        rows = max(1, BLOCK_ELEMS // max(x.shape[1], 1))
        for i in range(0, x.shape[0], rows):
            out.addmm_(x[i:i + rows].to(torch.float64).T, v[i:i + rows])
        return out
    rows = max(1, BLOCK_ELEMS // max(x.shape[1], 1))
    return torch.cat([x[i:i + rows].to(torch.float64) @ v for i in range(0, x.shape[0], rows)])


def other_side(x: torch.Tensor, vec: torch.Tensor, sigma: torch.Tensor, vec_side: str) -> torch.Tensor:
    """Singular vectors on the other side: U = X V Σ⁻¹ (vec_side="right") or V = Xᵀ U Σ⁻¹."""
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    return _times(x, vec, transpose=(vec_side == "left")) / safe


def randomized_svd(x: torch.Tensor, k: int, *, oversample: int = 10, n_iter: int = 6,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k SVD of ``x`` (U (m×k), σ (k,), V (n×k)) by a randomized range finder with power iterations.

    With 2 power iterations σ₁ was 2–13 % off for flat spectra; 6 (the default) gave 1e-4 to 1e-2.
    """
    m, n = x.shape
    k = min(k, m, n)
    width = min(m, n, k + oversample)
    a = x.to(torch.float64)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = _orth(a @ torch.randn(n, width, generator=gen, dtype=torch.float64).to(x.device))
    for _ in range(n_iter):
        q = _orth(a @ _orth(a.T @ q))
    ub, s, vh = torch.linalg.svd(q.T @ a, full_matrices=False)
    return (q @ ub)[:, :k], s[:k], vh[:k].T


def exact_svd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full thin SVD in float64: (U, σ, V) with X = U diag(σ) Vᵀ. The oracle, and SPEC §4's principal angles."""
    u, s, vh = torch.linalg.svd(x.to(torch.float64), full_matrices=False)
    return u, s, vh.T
