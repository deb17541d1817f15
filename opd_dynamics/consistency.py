"""Do two runs from the same W₀ update the same entries? Cross-run mask consistency (Path Not Taken, arXiv 2511.08567).

Path Not Taken (§4, "update sparsity is consistent across runs") finds that the entries RL updates overlap across
seeds and datasets far above what independent masks would give. For runs A and B from one base, at each step both
have, and for each selected matrix, a mask M of "updated" entries is taken from each ΔW = W_t − W₀:

- ``top:q``: the top-q share of |ΔW| (entries with |ΔW| ≥ the ⌈q·N⌉-th largest, and > 0; ties kept);
- ``bf16``: entries whose bf16 value changed (relative tolerance 1e-3, as :mod:`opd_dynamics.metrics.sparsity`).

Rows (run = ``A~B``): ``mask_jaccard`` = |A∩B| / |A∪B| and ``mask_overlap`` = |A∩B| / min(|A|, |B|), each with
its chance level as its own row — what masks of the same sizes placed independently at random give:
E|A∩B| = |A||B|/N, so ``mask_overlap_chance`` = max(|A|, |B|)/N and ``mask_jaccard_chance`` =
E|A∩B| / (|A| + |B| − E|A∩B|) (ratio of expectations; exact to O(1/N)). The counts (``mask_size_a``,
``mask_size_b``, ``mask_intersection``, ``mask_numel``) are rows too, so :func:`overall` pools modules as a ratio
of sums. Streams module-major: W₀, W_A,t and W_B,t of one tensor in memory at a time.

>>> import tempfile
>>> from opd_dynamics.synthetic import make_synthetic_runs
>>> runs = make_synthetic_runs(tempfile.mkdtemp(), steps=(1, 2), layers=1, hidden=16)
>>> df = mask_consistency(runs["opd"], runs["rl"], base=runs["base"], progress=False)
>>> sorted(df.run.unique()), bool((df[df.metric == "mask_overlap_chance"].value < 0.05).all())
(['opd~rl'], True)
"""
from __future__ import annotations

import math
import os
from contextlib import nullcontext

import pandas as pd
import torch

from . import provenance
from .errors import OPDError
from .linalg import Factored

MASKS = ("top", "bf16")
OUTPUTS = ("mask_jaccard", "mask_jaccard_chance", "mask_overlap", "mask_overlap_chance",
           "mask_size_a", "mask_size_b", "mask_intersection", "mask_numel")


def parse_mask(text: str) -> tuple[str, float]:
    """``"top:0.01"`` → ("top", 0.01); ``"top"`` → ("top", 0.01); ``"bf16"`` → ("bf16", nan).

    >>> parse_mask("top:0.05"), parse_mask("bf16")[0]
    (('top', 0.05), 'bf16')
    """
    kind, _, arg = text.partition(":")
    if kind == "bf16" and not arg:
        return "bf16", math.nan
    if kind == "top":
        try:
            q = float(arg) if arg else 0.01
        except ValueError:
            q = math.nan
        if 0 < q <= 1:
            return "top", q
        raise OPDError(f"--mask {text!r}: q must be a share in (0, 1]", hint="e.g. --mask top:0.01 (the top 1 %)")
    raise OPDError(f"--mask {text!r} not understood", hint="use top:Q (top-Q share of |ΔW|) or bf16 (bf16-changed)")


def top_mask(delta: torch.Tensor, q: float) -> torch.Tensor:
    """Entries of the top-q share of |ΔW|: |ΔW| ≥ the ⌈q·N⌉-th largest value and ΔW ≠ 0 (ties kept).

    >>> top_mask(torch.tensor([[0.1, -3.0], [2.0, 0.0]]), 0.5).tolist()
    [[False, True], [True, False]]
    """
    a = delta.abs().reshape(-1)
    k = max(1, math.ceil(q * a.numel() - 1e-9))
    kth = torch.topk(a, k).values[-1]
    return ((delta.abs() >= kth) & (delta != 0)).reshape(delta.shape)


def mask_of(kind: str, q: float, w0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    if kind == "top":
        return top_mask(delta, q)
    from .metrics.sparsity import bf16_unchanged

    return ~bf16_unchanged(w0, w0.to(torch.float32) + delta)


def consistency(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Jaccard and overlap of two boolean masks with their chance levels and the counts behind them.

    >>> a = torch.tensor([True, True, False, False]); b = torch.tensor([True, False, True, False])
    >>> r = consistency(a, b); r["mask_jaccard"], r["mask_overlap"], r["mask_overlap_chance"]
    (0.3333333333333333, 0.5, 0.5)
    """
    n = a.numel()
    na, nb, both = int(a.sum()), int(b.sum()), int((a & b).sum())
    union = na + nb - both
    expect = na * nb / n if n else math.nan
    return {"mask_jaccard": both / union if union else math.nan,
            "mask_jaccard_chance": expect / (na + nb - expect) if union else math.nan,
            "mask_overlap": both / min(na, nb) if min(na, nb) else math.nan,
            "mask_overlap_chance": max(na, nb) / n if min(na, nb) else math.nan,
            "mask_size_a": float(na), "mask_size_b": float(nb), "mask_intersection": float(both), "mask_numel": float(n)}


def _dense_delta(state, w0: torch.Tensor) -> torch.Tensor:
    if isinstance(state, Factored):
        return state.dense(torch.float32)
    from .linalg import difference

    return difference(state, w0)


def pair_rows(run_a, run_b, *, mask: str = "top:0.01", selector=None, steps=None, progress: bool = True) -> list[tuple]:
    """Long-table rows of :data:`OUTPUTS` for every selected matrix at every step both runs have (or ``steps``)."""
    from .engine import _part, plan
    from .io.reader import read_state
    from .select import Selector

    kind, q = parse_mask(mask)
    selector = selector or Selector()
    common = sorted(set(run_a.steps) & set(run_b.steps))
    if steps is not None:
        missing = sorted(set(steps) - set(common))
        if missing:
            raise OPDError(f"step {missing[0]} is not saved by both {run_a.name} and {run_b.name}; common steps: {common}",
                           hint="pick --steps among the common steps")
        common = sorted(steps)
    if not common:
        raise OPDError(f"runs {run_a.name} and {run_b.name} have no step in common",
                       hint="compare runs saved at matching steps")
    plans_b = {p.tensor: p for p in plan(run_b, selector)}
    todo = [p for p in plan(run_a, selector) if p.tensor in plans_b]
    name = f"{run_a.name}~{run_b.name}"
    rows: list[tuple] = []
    bar = _bar(len(todo) * len(common), progress)
    for p in todo:
        w0 = run_a.base.get_tensor(p.tensor)
        if run_b.base.path != run_a.base.path and not torch.equal(w0, run_b.base.get_tensor(p.tensor)):
            raise OPDError(f"{run_a.name} and {run_b.name} do not start from the same W₀: tensor {p.tensor!r} differs "
                           f"between {run_a.base.path} and {run_b.base.path}", hint="compare runs of one base model")
        for step in common:
            da = _dense_delta(read_state(run_a.steps[step], p.tensor), w0)
            db = _dense_delta(read_state(run_b.steps[step], p.tensor), w0)
            for part in p.parts:
                w0p, ap, bp = _part(w0, part), _part(da, part), _part(db, part)
                if ap.ndim != 2:
                    continue
                values = consistency(mask_of(kind, q, w0p, ap), mask_of(kind, q, w0p, bp))
                rows.extend((name, step, 0, part.name, part.layer, part.expert, part.kind, k, float(v))
                            for k, v in values.items())
            del da, db
            bar.update(1)
    bar.close()
    return rows


def _bar(total: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not progress, unit="ckpt", desc="mask consistency", leave=False)


def mask_consistency(run_a, run_b, *, base=None, names=None, mask: str = "top:0.01", select=None, steps=None,
                     out: str | os.PathLike | None = None, progress: bool = True) -> pd.DataFrame:
    """Cross-run mask consistency of two runs from one W₀: the long table with run ``A~B`` (module docstring).

    Args:
        run_a, run_b: run directories (or :class:`~opd_dynamics.io.discovery.Run` objects).
        base: W₀ (one for both, or one per run; the tensors must be equal).
        names: labels for the two runs.
        mask: ``top:Q`` (top-Q share of |ΔW|, default Q = 0.01) or ``bf16`` (entries whose bf16 value changed).
        select: ``--select`` clauses; steps: only these (default: every step both runs saved).
        out: write ``metrics.parquet`` + ``manifest.json`` here (atomically, as ``analyze -o`` does).
    """
    from .analyze import open_runs
    from .io.discovery import Run
    from .outdir import claim
    from .select import Selector
    from .table import from_rows, table_files

    parse_mask(mask)  # a bad --mask fails before anything is read
    with claim(out) if out is not None else nullcontext() as claimed:
        if isinstance(run_a, Run) and isinstance(run_b, Run):
            runs = [run_a, run_b]
        else:
            runs = open_runs([run_a, run_b], base=base, names=names)
        selector = select if isinstance(select, Selector) else Selector.parse(list(select or []))
        df = from_rows(pair_rows(*runs, mask=mask, selector=selector, steps=steps, progress=progress))
        if claimed is not None:
            manifest = provenance.manifest(
                "opd-dynamics mask-consistency", mask=mask, select=selector.to_json(),
                runs=[{"name": r.name, "root": str(r.root), "base": str(r.base.path)} for r in runs])
            claimed.commit(table_files(df, manifest))
    return df


def overall(df: pd.DataFrame) -> pd.DataFrame:
    """Pool modules per (run, step) as ratios of sums: Σ|A∩B| / Σ|A∪B| and its chance Σ E|A∩B| / Σ E|A∪B|.

    >>> rows = [("a~b", 1, 0, m, 0, None, "mlp_up", k, v) for m, sa, sb, i, n in (("x", 2, 2, 1, 10), ("y", 4, 4, 4, 10))
    ...         for k, v in (("mask_size_a", sa), ("mask_size_b", sb), ("mask_intersection", i), ("mask_numel", n))]
    >>> from opd_dynamics.table import from_rows
    >>> overall(from_rows(rows))[["mask_jaccard", "mask_jaccard_chance"]].round(4).values.tolist()
    [[0.7143, 0.2]]
    """
    wide = df[df.metric.isin(OUTPUTS[4:])].pivot_table(index=["run", "step", "module"], columns="metric",
                                                        values="value")
    expect = wide.mask_size_a * wide.mask_size_b / wide.mask_numel
    wide = wide.assign(union=wide.mask_size_a + wide.mask_size_b - wide.mask_intersection,
                       e_union=wide.mask_size_a + wide.mask_size_b - expect, expect=expect)
    g = wide.groupby(level=["run", "step"])[["mask_intersection", "union", "expect", "e_union"]].sum()
    return pd.DataFrame({"mask_jaccard": g.mask_intersection / g.union,
                         "mask_jaccard_chance": g.expect / g.e_union}).reset_index()
