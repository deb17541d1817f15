"""Cost of the geometry metrics (EffOPD arXiv 2605.11739 Fig. 4b; Geometry of OPD arXiv 2606.07082 App. C.3) next to
the core set, on a Qwen2-0.5B-shaped model and on a LoRA run.

Builds (under --dir) a bf16 base with Qwen2-0.5B's matrix shapes (hidden 896, intermediate 4864, 14 heads, 2 KV
heads; --layers of them, a small vocabulary since embeddings are not selected), --steps full checkpoints whose
updates touch part of the entries (as a bf16 RL/OPD run does), and a LoRA run (rank --rank on every attention and
MLP matrix) with the same base. Then times `analyze` on the attention + MLP matrices for: the core set, core + each
family, everything; and counts decompositions (opd_dynamics.linalg.COUNTS) against the rules: one spectrum of ΔW
per (module, step), one W₀ SVD per module per run, one W_t SVD per (module, step).

Usage: python bench/bench_geometry.py [--dir /tmp/opd-geo] [--layers 1] [--steps 2] [--rank 16]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from opd_dynamics import analyze, linalg
from opd_dynamics.metrics.registry import DEFAULT_METRICS

FAMILIES = {
    "sparsity": ["sparsity_bf16", "row_col_update_ratio"],
    "principal (svd)": ["principal_angles", "spectral_shift", "principal_mask_overlap", "low_magnitude_overlap"],
    "principal (gram)": ["principal_angles:method=\"gram\"", "spectral_shift:method=\"gram\"",
                         "principal_mask_overlap:method=\"gram\"", "low_magnitude_overlap"],
    "direction extra": ["subspace_locking", "rank1_pca_evr", "hill_alpha"],
}
MATRICES = {"self_attn.q_proj": (896, 896), "self_attn.k_proj": (128, 896), "self_attn.v_proj": (128, 896),
            "self_attn.o_proj": (896, 896), "mlp.gate_proj": (4864, 896), "mlp.up_proj": (4864, 896),
            "mlp.down_proj": (896, 4864)}


def build(root: Path, layers: int, steps: int, rank: int) -> None:
    marker = root / f"built-{layers}-{steps}-{rank}"
    if marker.exists():
        return
    gen = torch.Generator().manual_seed(0)
    cfg = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": layers,
           "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 1024, "tie_word_embeddings": True}
    base = {"model.embed_tokens.weight": 0.02 * torch.randn(1024, 896, generator=gen)}
    for i in range(layers):
        for m, shape in MATRICES.items():
            base[f"model.layers.{i}.{m}.weight"] = 0.02 * torch.randn(*shape, generator=gen)
    base = {k: v.to(torch.bfloat16) for k, v in base.items()}

    def write(sd, d: Path):
        d.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(cfg))

    write(base, root / "base")
    directions = {k: (torch.randn(v.shape[0], 8, generator=gen), torch.randn(8, v.shape[1], generator=gen))
                  for k, v in base.items() if ".layers." in k}
    lora_cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "base_model_name_or_path": str(root / "base")}
    for step in range(1, steps + 1):
        sd = dict(base)
        for k, (b, a) in directions.items():  # low-rank drift + dense noise; bf16 rounding hides part of it
            upd = 2e-4 * step * (b @ a) / 8 + 1e-4 * torch.randn(base[k].shape, generator=gen)
            sd[k] = (base[k].float() + upd).to(torch.bfloat16)
        write(sd, root / "full" / f"checkpoint-{step}")
        ad = {}
        for k, v in base.items():
            if ".layers." in k:
                mod = k[: -len(".weight")]
                ad[f"base_model.model.{mod}.lora_A.weight"] = 0.01 * torch.randn(rank, v.shape[1], generator=gen)
                ad[f"base_model.model.{mod}.lora_B.weight"] = 1e-3 * step * torch.randn(v.shape[0], rank, generator=gen)
        d = root / "lora" / f"checkpoint-{step}"
        d.mkdir(parents=True, exist_ok=True)
        save_file(ad, d / "adapter_model.safetensors", metadata={"format": "pt"})
        (d / "adapter_config.json").write_text(json.dumps(lora_cfg))
    marker.write_text("ok")


def timed(run: Path, base: Path | None, metrics: list[str]) -> tuple[float, dict, int]:
    before = linalg.COUNTS.copy()
    t = time.perf_counter()
    df = analyze([run], base=base, metrics=metrics, select=["kind=body"], progress=False, device="cpu")
    return time.perf_counter() - t, dict(linalg.COUNTS - before), df.groupby(["module", "step"]).ngroups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-geo")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    root = Path(args.dir)
    build(root, args.layers, args.steps, args.rank)
    n_mod = 7 * args.layers
    print(f"{args.layers} layer(s) × 7 matrices, {args.steps} steps, torch threads {torch.get_num_threads()}\n")
    print("| run | metric set | time | × core | decompositions |")
    print("|---|---|---|---|---|")
    for label, run, base in (("full bf16", root / "full", root / "base"), ("LoRA r=%d" % args.rank, root / "lora", None)):
        timed(run, base, list(DEFAULT_METRICS))  # warm-up: page cache, imports, thread pools
        core_t, core_c, views = timed(run, base, list(DEFAULT_METRICS))
        print(f"| {label} | core ({len(DEFAULT_METRICS)} metrics) | {core_t:.2f} s | 1.00 | {core_c} |")
        sets = dict(FAMILIES)
        sets["everything"] = sorted({m for fam in ("sparsity", "principal (svd)", "direction extra")
                                     for m in FAMILIES[fam]})
        for fam, ms in sets.items():
            t, c, _ = timed(run, base, list(DEFAULT_METRICS) + ms)
            extra = {k: c.get(k, 0) - core_c.get(k, 0) for k in c if c.get(k, 0) != core_c.get(k, 0)}
            print(f"| {label} | core + {fam} | {t:.2f} s | {t / core_t:.2f} | +{extra} |")
            if "svd64" in extra:  # one W₀ per module + one W_t per (module, step)
                assert extra["svd64"] <= n_mod + views, extra
            if "gram_svd" in extra:
                assert extra["gram_svd"] <= n_mod + views, extra
        spectra = core_c.get("gram_eigvalsh", 0) + core_c.get("factored", 0)
        print(f"\n{label}: {views} (module, step) views; ΔW spectra computed: {spectra} "
              f"(gram formed {core_c.get('gram', 0)}×, top-k iterations {core_c.get('gram_topk', 0)})\n")
        assert spectra <= views


if __name__ == "__main__":
    main()
