"""Size a cluster for `analyze` before renting it: a two-resource model (float64 compute, bytes read).

Per saved step, the default metric set costs one spectrum per matrix: a float64 Gram on the small side
(2·m·n² flops for an m×n matrix, n ≤ m) plus its eigendecomposition (modelled as 4·n³) — the top-k vectors and the
norms are small beside these. Every byte of every checkpoint is read once (module-major streaming). So

    compute = steps × Σ_matrices (2·m·n² + 4·n³) / F          F: one worker's effective float64 rate (measured)
    read    = (steps + 1) × bytes(checkpoint) / min(nodes × per-node bandwidth, storage bandwidth)
    wall    ≈ max(compute / workers, read)                   (reads overlap compute: read-ahead and many workers)

F comes from a measured run (`--calibrate SECONDS` for one step of `--calibrate-model` on one worker), so the model
is one number from this machine plus the shapes. `docs/performance.md` checks it against the runs it was not fitted to.

Usage: python bench/capacity.py --model 70b --steps 50 --nodes 1,4,16 --workers-per-node 8 --gflops 2000 \
           --node-gbps 2 --storage-gbps 40
"""
from __future__ import annotations

import argparse

MODELS = {  # hidden, intermediate, layers, heads, kv heads, vocab, tied embeddings
    "0.5b": (896, 4864, 24, 14, 2, 151936, True),
    "7b": (3584, 18944, 28, 28, 4, 152064, False),
    "70b": (8192, 28672, 80, 64, 8, 128256, False),
}


def matrices(model: str, layers: int | None = None, body_only: bool = False) -> list[tuple[int, int]]:
    h, inter, n_layers, heads, kv, vocab, tied = MODELS[model]
    kvd = h // heads * kv
    block = [(h, h), (kvd, h), (kvd, h), (h, h), (inter, h), (inter, h), (h, inter)]
    out = block * (layers if layers is not None else n_layers)
    if not body_only:
        out += [(vocab, h)] + ([] if tied else [(vocab, h)])
    return out


def flops(shapes) -> float:
    total = 0.0
    for m, n in shapes:
        big, small = max(m, n), min(m, n)
        total += 2.0 * big * small ** 2 + 4.0 * small ** 3
    return total


def params(model: str) -> int:
    h, inter, n_layers, heads, kv, vocab, tied = MODELS[model]
    kvd = h // heads * kv
    per_layer = 2 * h * h + 2 * kvd * h + 3 * inter * h + 2 * h + 2 * kvd  # + norms and q/k/v biases (small)
    return n_layers * per_layer + vocab * h * (1 if tied else 2) + h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="70b")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--nodes", default="1,4,16,64")
    ap.add_argument("--workers-per-node", type=int, default=8)
    ap.add_argument("--gflops", type=float, default=None, help="one worker's effective float64 GFLOP/s")
    ap.add_argument("--calibrate", type=float, default=None, help="measured seconds per step of --calibrate-model")
    ap.add_argument("--calibrate-model", choices=sorted(MODELS), default="0.5b")
    ap.add_argument("--node-gbps", type=float, default=2.0, help="read bandwidth per node, GB/s")
    ap.add_argument("--storage-gbps", type=float, default=40.0, help="aggregate storage bandwidth, GB/s")
    a = ap.parse_args()
    if a.gflops is None:
        if a.calibrate is None:
            raise SystemExit("give --gflops, or --calibrate SECONDS measured for one step of --calibrate-model")
        a.gflops = flops(matrices(a.calibrate_model)) / a.calibrate / 1e9
    per_step = flops(matrices(a.model))
    nbytes = 2.0 * params(a.model) * (a.steps + 1)
    print(f"# {a.model}: {params(a.model) / 1e9:.1f} B parameters, {a.steps} steps + base = {nbytes / 1e12:.2f} TB bf16; "
          f"{per_step / 1e15:.2f} PFLOP per step; worker rate {a.gflops:.0f} GFLOP/s; "
          f"{a.node_gbps} GB/s per node, {a.storage_gbps} GB/s storage")
    print("| nodes | workers | compute (h) | read (h) | wall (h) | bound by |\n|---|---|---|---|---|---|")
    for n in [int(x) for x in a.nodes.split(",")]:
        workers = n * a.workers_per_node
        compute = a.steps * per_step / (a.gflops * 1e9) / workers
        read = nbytes / (min(n * a.node_gbps, a.storage_gbps) * 1e9)
        bound = "compute" if compute >= read else ("storage" if n * a.node_gbps > a.storage_gbps else "node reads")
        print(f"| {n} | {workers} | {compute / 3600:.2f} | {read / 3600:.2f} | {max(compute, read) / 3600:.2f} | {bound} |")


if __name__ == "__main__":
    main()
