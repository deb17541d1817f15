"""Embedding shift on the reference runs (EffOPD arXiv 2605.11739 Fig. 11 / Table 3): docs/figures/embedding_shift.png
and the table in docs/reference-runs.md.

Usage: python bench/reference_embedding.py LAB_DIR [FIGURE]   (LAB_DIR written by build_reference_runs: base/, runs/)
The tokens "the model uses" are those of the addition task's prompts and worked solutions (validation split), as
the lab tokenizer writes them; the other rows are reported apart.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

from opd_dynamics.lab import load_tokenizer
from opd_dynamics.task.addition import AdditionTask
from opd_dynamics.metrics.embedding_shift import shift_values, used_token_ids
from opd_dynamics.plots.embedding import embedding_pairs, embedding_shift_pca


def main() -> None:
    lab = Path(sys.argv[1])
    figure = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("docs/figures/embedding_shift.png")
    tok = load_tokenizer(lab / "base")
    texts = [e.prompt + e.solution for e in AdditionTask(digits=2).examples("validation")]
    ids = used_token_ids(texts, tok)
    runs = {r: lab / "runs" / r for r in ("opd", "rl", "sft")}
    used = embedding_pairs(runs, lab / "base", tokens=ids)
    every = embedding_pairs(runs, lab / "base")
    rest = [i for i in range(next(iter(every.values()))[0].shape[0]) if i not in set(ids)]
    rows = []
    for r in runs:
        for label, (e0, et) in (("used", used[r]), ("other", tuple(x[rest] for x in every[r]))):
            v = shift_values(e0, et, k=2)
            rows.append({"run": r, "rows": f"{label} ({len(e0)})", "cos to W₀": v["embedding_cosine"],
                         "other-token cos": v["embedding_cosine_chance"],
                         "‖ΔE‖/‖E₀‖": v["embedding_relative_shift"], "PCA-2 sim.": v["embedding_pca_similarity"],
                         "PCA displacement": v["embedding_pca_displacement"]})
    table = pd.DataFrame(rows)
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    fig = embedding_shift_pca(used, labels=[tok.decode([i]).replace(" ", "␣") for i in ids])
    fig.savefig(figure, dpi=110)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\nwrote {figure}; {len(ids)} used tokens: {tok.decode(ids)!r}; load: {load}")


if __name__ == "__main__":
    main()
