"""Remote read throughput: the same trajectory read from local disk and from a local S3 server (moto + s3fs).

Builds a Llama-shaped trajectory (base + --steps checkpoints, float32, 2 shards each) under a temporary directory,
uploads it to moto's S3 server on 127.0.0.1, then times, in this process:

- read:    every tensor of every checkpoint once, through ``SafetensorsFile`` (local ``pread`` vs ranged GETs)
- analyze: ``opd_dynamics.analyze`` with norm metrics (local path vs ``s3://`` URL, header cache off)

and counts the bytes the S3 server served (through a logging proxy, timed separately) against the bytes of the
files. The server runs in this process and shares the CPUs with the client, so the S3 figure is a floor for what
a real endpoint gives (moto's server is pure Python), not a network figure.

Usage: python bench/bench_remote.py [--hidden 512] [--layers 4] [--steps 3] [--repeat 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def build(root: Path, hidden: int, layers: int, steps: int) -> dict:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    inter, vocab = int(hidden * 8 / 3) // 64 * 64, 4096
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (hidden, hidden), p + "self_attn.k_proj.weight": (hidden, hidden),
                       p + "self_attn.v_proj.weight": (hidden, hidden), p + "self_attn.o_proj.weight": (hidden, hidden),
                       p + "mlp.gate_proj.weight": (inter, hidden), p + "mlp.up_proj.weight": (inter, hidden),
                       p + "mlp.down_proj.weight": (hidden, inter), p + "input_layernorm.weight": (hidden,),
                       p + "post_attention_layernorm.weight": (hidden,)})
    base = {k: 0.02 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": hidden,
              "num_hidden_layers": layers, "intermediate_size": inter, "vocab_size": vocab,
              "num_attention_heads": hidden // 64, "num_key_value_heads": hidden // 64, "tie_word_embeddings": False}

    def write(sd, d: Path):
        d.mkdir(parents=True)
        names, wm = list(sd), {}
        for i in range(2):
            fname = f"model-{i + 1:05d}-of-00002.safetensors"
            chunk = {k: sd[k].contiguous() for k in names[i::2]}
            save_file(chunk, d / fname, metadata={"format": "pt"})
            wm.update({k: fname for k in chunk})
        (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
        (d / "config.json").write_text(json.dumps(config))

    write(base, root / "base")
    for s in range(1, steps + 1):
        write({k: v + 1e-3 * s * torch.randn(v.shape, generator=gen) for k, v in base.items()},
              root / "run" / f"checkpoint-{s}")
    return {"bytes": sum(f.stat().st_size for f in root.rglob("*.safetensors"))}


def read_all(dirs) -> int:
    from opd_dynamics.io.checkpoint import Checkpoint

    total = 0
    for d in dirs:
        ck = Checkpoint(d)
        for k in ck.keys():
            total += ck.get_tensor(k).numel()
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)

    import opd_dynamics as od
    from opd_dynamics.io.storage import StorageConfig, as_path
    from opd_dynamics.machine import describe
    from s3_server import Proxy, S3Server

    print(describe())
    root = Path(tempfile.mkdtemp(prefix="opd-bench-remote-"))
    facts = build(root, args.hidden, args.layers, args.steps)
    server = S3Server().start()
    proxy = Proxy(server.port).start()
    server.upload(root / "run", "bench", "run")
    server.upload(root / "base", "bench", "base")
    mb = facts["bytes"] / 2**20
    print(f"trajectory: hidden {args.hidden}, {args.layers} layers, base + {args.steps} checkpoints, "
          f"{mb:.1f} MiB of safetensors")
    local_dirs = [root / "base", *sorted((root / "run").iterdir())]
    results = {}
    for rep in range(args.repeat):
        def remote(endpoint, n):
            cfg = StorageConfig(options={"endpoint_url": endpoint}, cache_dir=False, retries=n)  # fresh listings
            return [as_path("s3://bench/base", cfg), *[as_path(f"s3://bench/run/{d.name}", cfg) for d in local_dirs[1:]]]

        for label, dirs in (("read local", local_dirs), ("read s3", remote(server.url, rep)),
                            ("read s3+proxy", remote(proxy.url, rep))):
            proxy.log.clear()
            t = time.perf_counter()
            read_all(dirs)
            results.setdefault(label, []).append(time.perf_counter() - t)
            if label == "read s3+proxy":
                served = proxy.object_bytes()
        metrics = ["frobenius", "relative_update"]
        t = time.perf_counter()
        od.analyze([root / "run"], base=root / "base", metrics=metrics, progress=False)
        results.setdefault("analyze local", []).append(time.perf_counter() - t)
        cfg = StorageConfig(options={"endpoint_url": server.url}, cache_dir=False, retries=1 + rep)  # fresh listings
        t = time.perf_counter()
        od.analyze(["s3://bench/run"], base="s3://bench/base", metrics=metrics, progress=False, storage=cfg)
        results.setdefault("analyze s3", []).append(time.perf_counter() - t)
    load = os.getloadavg()[0]
    for label, times in results.items():
        best = min(times)
        print(f"{label:14s} best of {len(times)}: {best:6.2f} s  {mb / best:7.1f} MiB/s")
    print(f"s3/local time: read {min(results['read s3']) / min(results['read local']):.2f}x, "
          f"analyze {min(results['analyze s3']) / min(results['analyze local']):.2f}x")
    print(f"bytes served by S3 for one full read: {served / 2**20:.2f} MiB = {served / facts['bytes']:.4f} of the "
          f"files; load average at the end {load:.2f}")
    server.stop()


if __name__ == "__main__":
    main()
