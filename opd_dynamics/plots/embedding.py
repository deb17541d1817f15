"""EffOPD Fig. 11 (arXiv 2605.11739): the embeddings of the tokens a model uses, before and after training, in one PCA.

Input is not the long table but the embedding rows themselves: :func:`embedding_pairs` reads them from runs on disk
(W₀'s rows and a step's rows for the chosen token ids), :func:`embedding_shift_pca` draws one panel per run. The
numbers in each title are those of the ``embedding_shift`` metric (:mod:`opd_dynamics.metrics.embedding_shift`).
"""
from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from ..errors import OPDError
from ..metrics.embedding_shift import joint_pca, shift_values
from ._style import figure, run_colors


def embedding_pairs(runs: Mapping[str, str | os.PathLike], base: str | os.PathLike, *, step: int | None = None,
                    tokens: Sequence[int] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{run: (E₀, E_t)}: the input-embedding rows of ``tokens`` (all rows when None) in W₀ and at ``step``
    (default: each run's final step), float64."""
    from ..io.discovery import open_run
    from ..naming import classify

    out = {}
    for name, root in runs.items():
        run = open_run(root, base=base, name=name)
        keys = [k for k in run.base.keys() if classify(k)[0] == "embed" and run.base.shape(k)[0] > 1]
        if not keys:
            raise OPDError(f"{run.base.path}: no input-embedding matrix found", hint="is this a causal LM checkpoint?")
        s = run.final_step if step is None else step
        if s not in run.steps:
            raise OPDError(f"{name}: no checkpoint at step {s}; steps are {sorted(run.steps)}", hint="pick one of them")
        e0 = run.base.get_tensor(keys[0]).double().numpy()
        et = run.steps[s].get_tensor(keys[0]).double().numpy()
        if tokens is not None:
            ids = np.asarray(sorted(set(int(t) for t in tokens)))
            e0, et = e0[ids], et[ids]
        out[name] = (e0, et)
    return out


def embedding_shift_pca(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], *, labels: Sequence[str] | None = None,
                        colors: Mapping[str, str] | None = None):
    """One panel per run: base rows (grey circles) and trained rows (run colour, triangles) in their joint 2-D PCA,
    a line from each token's base point to its trained point; the title gives the mean cosine to the base (with
    its lost-identity chance level) and the PCA displacement."""
    if not pairs:
        raise OPDError("embedding_shift_pca: no runs given", hint="pass {run: (E0, Et)}, e.g. from embedding_pairs")
    palette = run_colors(list(pairs), colors)
    fig, axes = figure(1, len(pairs), width=3.6 * len(pairs) + 0.4, height=3.6)
    for ax, (name, (e0, et)) in zip(axes.flat, pairs.items()):
        p0, pt = joint_pca(e0, et, 2)
        v = shift_values(e0, et, k=2)
        ax.plot(np.stack([p0[:, 0], pt[:, 0]]), np.stack([p0[:, 1], pt[:, 1]]), color="#999999", lw=0.6, zorder=1)
        ax.scatter(p0[:, 0], p0[:, 1], s=28, facecolors="none", edgecolors="#555555", label="W₀", zorder=2)
        ax.scatter(pt[:, 0], pt[:, 1], s=22, marker="^", color=palette[name], label=f"{name} (trained)", zorder=3)
        if labels is not None:
            for (x, y), text in zip(p0, labels):
                ax.annotate(text, (x, y), fontsize=7, color="#333333", xytext=(2, 2), textcoords="offset points")
        ax.set_title(f"{name}: cos to W₀ {v['embedding_cosine']:.3f} (other token {v['embedding_cosine_chance']:.2f})\n"
                     f"displacement {v['embedding_pca_displacement']:.3f} of the spread", fontsize=9)
        ax.set_xlabel("joint PC 1")
        ax.set_ylabel("joint PC 2")
        ax.legend(fontsize=7, loc="best")
    return fig
