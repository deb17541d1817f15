"""Every decomposition the toolkit does, with its accuracy stated (and tested in tests/test_linalg.py).

Paths and their errors (σ₁ = largest singular value, ε₆₄ ≈ 2.2e-16, ε₃₂ ≈ 1.2e-7):

- ``gram`` (default): float64 Gram XᵀX (or XXᵀ, the smaller side) accumulated in row blocks, then
  ``eigvalsh``. Eigenvalues carry absolute error ~ε₆₄·σ₁², so σᵢ is exact to ~1e-10·σ₁ for σᵢ ≳ 1e-4·σ₁ and
  σ below ~1e-8·σ₁ are lost in rounding. They are harmless for the metrics, which use σ only up to the
  numerical rank (σ > σ₁·max(m,n)·ε₃₂, docs/metrics.md). 2–9× faster than ``svdvals`` on CPU.
- ``svd``: ``torch.linalg.svdvals`` in float32 on the tall orientation (a wide matrix is transposed first:
  4–6× faster, same values); error ~ε₃₂·σ₁ absolute.
- ``svd64``: the same in float64; the oracle.
- Top-k singular vectors: subspace iteration on the float64 Gram with ``k + oversample`` columns and
  ``n_iter`` iterations, then Rayleigh–Ritz. Each Gram iteration multiplies by XᵀX (σ²), so the angle between the
  computed and the true top-k subspace decays like (σ_{k+p+1}/σ_k)^(2·n_iter), times the tangent of the random
  start's angle (≲ 10); σ errors go like that angle squared. A flat spectrum with no gap after k has no
  well-defined top-k subspace: then the vectors capture the top energy to that accuracy instead (tested). The other
  side's vectors come from U = X V Σ⁻¹.

- Factored updates ΔW = s·B·A (LoRA, rank r ≪ min(m, n)): :class:`Factored`. QR of both factors and one r×r SVD
  give ΔW's exact thin SVD in O((m + n)·r²) instead of O(m·n·min(m, n)); ``dense()`` only on demand.
- Principal angles between subspaces (:func:`principal_angles`): sines for small angles, cosines for large,
  as in Knyazev & Argentati (2002) and ``scipy.linalg.subspace_angles``: exact to ~ε₆₄ at every angle, where
  arccos of the cosines alone loses everything below ~1e-8 rad.

- BLAS backend (CPU only): the float64 Gram, ``eigvalsh``/``eigh`` and the products around them run either in torch
  (MKL in the CPU wheels) or in numpy (OpenBLAS): ``backend="torch"|"numpy"``, default :func:`backend`, the one
  measured faster on this machine (:mod:`opd_dynamics.machine`). Same float64 algorithms, same stated errors (the
  tests hold both backends to every bound above); numpy forms ``bᵀb`` with ``syrk`` (half the flops of a GEMM).

Everything works on CUDA tensors too (float64 is used there as well; the Gram keeps it cheap). The only
CPU-pinned path is :func:`exact_svd` with ``cpu=True``, which the W₀-vs-W_t principal angles use (Geometry of OPD arXiv 2606.07082 App. C.3).
:data:`COUNTS` counts the decompositions done (tests and ``bench/`` check the one-per-(module, step) rule).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

EPS32 = float(np.finfo(np.float32).eps)
BLOCK_ELEMS = 1 << 22  # blocks of ~4M elements (32 MB in float64): bounded temporaries, BLAS-efficient
METHODS = ("gram", "svd", "svd64")
BACKENDS = ("torch", "numpy")
#: decompositions done so far, by kind ("gram" (forming XᵀX), "gram_eigvalsh", "svdvals", "gram_topk",
#: "svd64", "gram_svd", "factored"); the counter only grows, callers diff it
COUNTS: Counter = Counter()


def row_blocks(x: torch.Tensor):
    """Views of ``x`` along its first dimension holding at most ~``BLOCK_ELEMS`` elements each (no copies)."""
    if x.ndim == 0:
        yield x.reshape(1)
        return
    per_row = max(1, x[0].numel()) if x.shape[0] else 1
    rows = max(1, BLOCK_ELEMS // per_row)
    for i in range(0, x.shape[0], rows):
        yield x[i:i + rows]


def frobenius(x: torch.Tensor) -> float:
    """‖x‖_F accumulated in float64, block by block (never a whole-tensor float64 or float32 copy).

    >>> frobenius(torch.tensor([[3., 4.]]))
    5.0
    """
    return sum(float(torch.linalg.vector_norm(b, dtype=torch.float64)) ** 2 for b in row_blocks(x)) ** 0.5


def difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a − b in float32 from tensors of any float dtypes; b is upcast block by block, so the only full-size
    allocation is the result (a bf16 ``b`` would otherwise be upcast whole first).

    >>> difference(torch.tensor([3., 4.]), torch.tensor([1., 1.], dtype=torch.bfloat16)).tolist()
    [2.0, 3.0]
    """
    out = a.to(torch.float32, copy=True)
    for o, bb in zip(row_blocks(out), row_blocks(b)):
        o.sub_(bb)
    return out


def gram(x: torch.Tensor, backend: str | None = None) -> tuple[torch.Tensor, str]:
    """Float64 Gram matrix of ``x`` on its smaller side, accumulated in blocks to bound memory.

    Returns ``(G, side)`` where ``side == "right"`` means G = XᵀX (n×n, its eigenvectors are right singular
    vectors) and ``"left"`` means G = XXᵀ.

    >>> g, side = gram(torch.tensor([[1., 0.], [0., 2.], [0., 0.]]))
    >>> side, g.diagonal().tolist()
    ('right', [1.0, 4.0])
    """
    COUNTS["gram"] += 1
    m, n = x.shape
    side = "right" if m >= n else "left"
    a = x if side == "right" else x.T  # tall: (big, small)
    small = a.shape[1]
    rows = max(1, BLOCK_ELEMS // max(small, 1))
    if _use_numpy(x, backend):
        gn = np.zeros((small, small))
        for i in range(0, a.shape[0], rows):
            b = a[i:i + rows].to(torch.float64).contiguous().numpy()
            gn += b.T @ b  # numpy recognises bᵀb and calls syrk (one triangle, then mirrored)
        return torch.from_numpy(gn), side
    g = torch.zeros(small, small, dtype=torch.float64, device=x.device)
    for i in range(0, a.shape[0], rows):
        b = a[i:i + rows].to(torch.float64)
        g.addmm_(b.T, b)
    return g, side


def backend() -> str:
    """The CPU float64 BLAS backend used when none is named: the faster one on this machine, measured once."""
    from .machine import blas_backend

    return blas_backend()


def _use_numpy(t: torch.Tensor, backend_: str | None) -> bool:
    if t.device.type != "cpu":
        return False
    b = backend_ or backend()
    if b not in BACKENDS:
        raise ValueError(f"unknown BLAS backend {b!r}; choose from {BACKENDS}")
    return b == "numpy"


def _eigh(g: torch.Tensor, backend_: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascending eigenvalues and eigenvectors of a symmetric float64 matrix, on the chosen backend."""
    if _use_numpy(g, backend_):
        lam, vec = np.linalg.eigh(g.numpy())
        return torch.from_numpy(lam), torch.from_numpy(vec)
    return torch.linalg.eigh(g)


def eigh_spectrum(g: torch.Tensor, backend: str | None = None) -> np.ndarray:
    """Singular values (descending, float64) from a Gram matrix's eigenvalues."""
    COUNTS["gram_eigvalsh"] += 1
    if _use_numpy(g, backend):
        lam = np.clip(np.linalg.eigvalsh(g.numpy())[::-1], 0, None)
        return np.sqrt(lam)
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
    COUNTS["svdvals"] += 1
    tall = x if x.shape[0] >= x.shape[1] else x.T
    dtype = torch.float64 if method == "svd64" else torch.float32
    return torch.linalg.svdvals(tall.to(dtype)).to(torch.float64).cpu().numpy()


def numerical_rank(sigma: np.ndarray, shape: tuple[int, int]) -> int:
    """Count of σᵢ > σ₁·max(m, n)·ε₃₂ (docs/metrics.md)."""
    if sigma.size == 0 or sigma[0] <= 0:
        return 0
    return int(np.count_nonzero(sigma > sigma[0] * max(shape) * EPS32))


def _orth(y: torch.Tensor, backend_: str | None = "torch") -> torch.Tensor:
    if _use_numpy(y, backend_):
        return torch.from_numpy(np.linalg.qr(y.numpy())[0])
    return torch.linalg.qr(y)[0]


def gram_top_vectors(g: torch.Tensor, k: int, *, oversample: int = 10, n_iter: int = 8,
                     seed: int = 0, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k eigenpairs of a PSD Gram matrix by subspace iteration: (vectors (s×k), σ = sqrt(λ) (k,)).

    Falls back to a full ``eigh`` when k + oversample covers most of the matrix.
    """
    COUNTS["gram_topk"] += 1
    s = g.shape[0]
    k = min(k, s)
    width = min(s, k + oversample)
    if width * 2 >= s:
        lam, vec = _eigh(g, backend)
        return vec[:, -k:].flip(1), lam[-k:].flip(0).clamp_min(0).sqrt()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q0 = torch.randn(s, width, generator=gen, dtype=torch.float64).to(g.device)
    if _use_numpy(g, backend):
        from .machine import single_blas_thread

        with single_blas_thread():  # small products and QRs: one thread is faster than two (machine.py)
            gn, qn = g.numpy(), np.linalg.qr(q0.numpy())[0]
            for _ in range(n_iter):
                qn = np.linalg.qr(gn @ qn)[0]
            lam, w = np.linalg.eigh(qn.T @ gn @ qn)
            vec = np.ascontiguousarray(qn @ w[:, -k:][:, ::-1])
        return torch.from_numpy(vec), torch.from_numpy(lam[-k:][::-1].copy()).clamp_min(0).sqrt()
    q = _orth(q0, backend)
    for _ in range(n_iter):
        q = _orth(g @ q)
    lam, w = _eigh(q.T @ g @ q, backend)
    vec = q @ w[:, -k:].flip(1)
    return vec, lam[-k:].flip(0).clamp_min(0).sqrt()


def _times(x: torch.Tensor, v: torch.Tensor, transpose: bool, backend_: str | None = None) -> torch.Tensor:
    """(X or Xᵀ) @ v in float64, in row blocks of X."""
    rows = max(1, BLOCK_ELEMS // max(x.shape[1], 1))
    if _use_numpy(x, backend_):
        vn = v.numpy()
        blocks = (x[i:i + rows].to(torch.float64).numpy() for i in range(0, x.shape[0], rows))
        if transpose:
            out = np.zeros((x.shape[1], v.shape[1]))
            for i, b in zip(range(0, x.shape[0], rows), blocks):
                out += b.T @ vn[i:i + rows]
            return torch.from_numpy(out)
        return torch.from_numpy(np.concatenate([b @ vn for b in blocks]))
    if transpose:  # Xᵀ v = Σ_blocks X_bᵀ v_b
        out = torch.zeros(x.shape[1], v.shape[1], dtype=torch.float64, device=x.device)
        rows = max(1, BLOCK_ELEMS // max(x.shape[1], 1))
        for i in range(0, x.shape[0], rows):
            out.addmm_(x[i:i + rows].to(torch.float64).T, v[i:i + rows])
        return out
    rows = max(1, BLOCK_ELEMS // max(x.shape[1], 1))
    return torch.cat([x[i:i + rows].to(torch.float64) @ v for i in range(0, x.shape[0], rows)])


def other_side(x: torch.Tensor, vec: torch.Tensor, sigma: torch.Tensor, vec_side: str,
               backend: str | None = None) -> torch.Tensor:
    """Singular vectors on the other side: U = X V Σ⁻¹ (vec_side="right") or V = Xᵀ U Σ⁻¹."""
    safe = torch.where(sigma > 0, sigma, torch.ones_like(sigma))
    return _times(x, vec, transpose=(vec_side == "left"), backend_=backend) / safe


def exact_svd(x: torch.Tensor, *, cpu: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full thin SVD in float64: (U, σ, V) with X = U diag(σ) Vᵀ. The oracle, and the W₀-vs-W_t principal angles.

    A wide matrix is decomposed as its transpose (LAPACK is 1.5–2× faster on the tall side, same result).
    ``cpu=True`` moves it to the CPU first (W₀ and W_t are nearly identical, so their geometry needs float64 on the CPU).

    >>> u, s, v = exact_svd(torch.tensor([[0., 2.], [1., 0.]]))
    >>> s.tolist(), (u @ torch.diag(s) @ v.T).tolist()
    ([2.0, 1.0], [[0.0, 2.0], [1.0, 0.0]])
    """
    COUNTS["svd64"] += 1
    x = x.to("cpu" if cpu else x.device, torch.float64)
    if x.shape[0] < x.shape[1]:
        v, s, uh = torch.linalg.svd(x.T, full_matrices=False)
        return uh.T, s, v
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    return u, s, vh.T


def gram_svd(x: torch.Tensor, k: int, *, cpu: bool = False,
             backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k (U, σ, V) from the float64 Gram on the small side (``eigh``), the other side as X V Σ⁻¹.

    3–6× faster than :func:`exact_svd` on a 896×4864 matrix. Errors: eigenvector j is off by
    ~ε₆₄·σ₁² / (σ_j² − σ_{j+1}²), i.e. σ₁/(2σ_j) times the SVD's own ~ε₆₄·σ₁/(σ_j − σ_{j+1}); for weight matrices
    (σ₁/σ_k ≲ 1e3) that is still ≲ 1e-12 rad for any subspace with a relative gap above 1e-3.
    """
    COUNTS["gram_svd"] += 1
    x = x.to("cpu" if cpu else x.device, torch.float64)
    g, side = gram(x, backend)
    lam, vec = _eigh(g, backend)
    k = min(k, g.shape[0])
    vec, sig = vec[:, -k:].flip(1), lam[-k:].flip(0).clamp_min(0).sqrt()
    other = other_side(x, vec, sig, side, backend)
    return (other, sig, vec) if side == "right" else (vec, sig, other)


def principal_angles(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between span(A) and span(B), A and B with orthonormal columns.

    cos θ from the singular values of AᵀB, sin θ from those of B − A(AᵀB); each angle is taken from whichever is
    better conditioned (sine below 45°), so angles of 1e-12 rad come out right.

    >>> a = np.eye(3)[:, :2]; b = np.array([[1, 0], [0, np.cos(1e-9)], [0, np.sin(1e-9)]])
    >>> principal_angles(a, b).tolist()
    [0.0, 1e-09]
    """
    a = torch.as_tensor(a, dtype=torch.float64).cpu()
    b = torch.as_tensor(b, dtype=torch.float64)
    b = b.to(a.device)
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    m = a.T @ b                                           # (ka, kb)
    cos = torch.linalg.svdvals(m).clamp(0, 1).flip(0)     # ascending -> angles descending
    sin = torch.linalg.svdvals(b - a @ m).clamp(0, 1)     # descending -> angles descending
    theta = torch.where(cos ** 2 >= 0.5, torch.arcsin(sin[: cos.numel()]), torch.arccos(cos))
    return theta.flip(0).numpy()


@dataclass(frozen=True)
class Factored:
    """A matrix held as ``scale · B @ A`` with B (m×r), A (r×n): a LoRA update, never materialised unless asked.

    Everything the engine does to a stored tensor has a factored twin: ``.T`` (stored (in, out) layouts),
    ``rows`` (fused q/k/v slices), ``-`` (step-to-step updates: rank ≤ r₁ + r₂) and :meth:`svd` (exact thin SVD).

    >>> f = Factored(torch.ones(3, 1), torch.ones(1, 2), 2.0)
    >>> f.shape, f.dense().tolist(), [round(x, 6) for x in f.svd()[1].tolist()]
    ((3, 2), [[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]], [4.898979])
    """

    b: torch.Tensor  # (m, r)
    a: torch.Tensor  # (r, n)
    scale: float = 1.0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.b.shape[0], self.a.shape[1])

    @property
    def ndim(self) -> int:
        return 2

    @property
    def rank_bound(self) -> int:
        return self.b.shape[1]

    @property
    def T(self) -> "Factored":  # noqa: N802  (mirrors Tensor.T)
        return Factored(self.a.T, self.b.T, self.scale)

    def rows(self, start: int, stop: int) -> "Factored":
        return Factored(self.b[start:stop], self.a, self.scale)

    def to(self, device) -> "Factored":
        return Factored(self.b.to(device), self.a.to(device), self.scale)

    def __sub__(self, other: "Factored") -> "Factored":
        """self − other as one factorisation [B₁, B₂]·[s₁A₁; −s₂A₂] (scale folded into A)."""
        if self.shape != other.shape:
            raise ValueError(f"shapes differ: {self.shape} vs {other.shape}")
        b = torch.cat([self.b.to(torch.float64), other.b.to(torch.float64)], dim=1)
        a = torch.cat([self.scale * self.a.to(torch.float64), -other.scale * other.a.to(torch.float64)], dim=0)
        return Factored(b, a, 1.0)

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """s·B·A, computed in float64 and rounded once to ``dtype``."""
        return (self.b.to(torch.float64) @ self.a.to(torch.float64)).mul_(self.scale).to(dtype)

    def svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exact thin SVD (U (m×r), σ (r,), V (n×r)), float64: B = Q_B R_B, Aᵀ = Q_A R_A, s·R_B R_Aᵀ = U_c Σ V_cᵀ.

        Columns beyond the factors' rank carry σ = 0 (numerically ~ε₆₄·σ₁); callers cut at the numerical rank.
        """
        COUNTS["factored"] += 1
        qb, rb = torch.linalg.qr(self.b.to(torch.float64))
        qa, ra = torch.linalg.qr(self.a.to(torch.float64).T)
        uc, s, vch = torch.linalg.svd(self.scale * (rb @ ra.T))
        return qb @ uc, s, qa @ vch.T
