"""Read throughput and peak RSS of the DeepSpeed ZeRO reader against HF safetensors of the same weights.

Builds (once, under --dir) a Llama with hidden 512, 6 layers, vocab 8192 (27 M parameters, 108 MB in fp32), trains it
one step with DeepSpeed ZeRO-2 and ZeRO-3 on 2 gloo ranks on CPU and saves each (`engine.save_checkpoint`), plus
the gathered fp32 weights as `model.safetensors`. Then, each in its own process (so peak RSS is that read's own),
opens the checkpoint through the format registry and reads every tensor once (page cache warm), best of --repeat.
The header prints the CPU and the load average: the machine is shared, quote the ratios.

Usage: DS_ACCELERATOR=cpu python bench/bench_deepspeed.py [--dir /tmp/opd-bench-ds] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _worker(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(HERE.parent / "tests"))
    import ds_writer

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None
    for stage in (2, 3):
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=8192, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
                          num_attention_heads=8, num_key_value_heads=4)
        model = LlamaForCausalLM(cfg)
        ds = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": stage},
              "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
        eng, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4), config=ds)
        x = torch.randint(0, 8192, (1, 16))
        eng.backward(eng(input_ids=x, labels=x).loss)
        eng.step()
        eng.save_checkpoint(str(Path(out) / f"zero{stage}"), tag="global_step1")
        sd = ds_writer._full_state(eng, stage)
        if rank == 0:
            ds_writer._save_hf(sd, cfg, Path(out) / f"hf{stage}")


def build(root: Path) -> None:
    if (root / "hf3" / "model.safetensors").exists():
        return
    import torch.multiprocessing as mp

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    mp.spawn(_worker, args=(2, str(root), 29655), nprocs=2)


def measure(path: str) -> None:
    from opd_dynamics.io import formats

    t = time.perf_counter()
    ck = formats.open(path)
    n = sum(ck.get_tensor(k).nbytes for k in ck.keys())
    dt = time.perf_counter() - t
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(f"{dt} {n} {hwm / 1024} {ck.format}")  # VmHWM is in kB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/opd-bench-ds")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--measure")
    a = ap.parse_args()
    if a.measure:
        return measure(a.measure)
    root = Path(a.dir)
    build(root)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor())
    print(f"# {cpu}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (1 min)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    best = {}
    for name in ("hf2", "zero2/global_step1", "hf3", "zero3/global_step1"):
        runs = []
        for _ in range(a.repeat):
            out = subprocess.run([sys.executable, __file__, "--measure", str(root / name)], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            runs.append((float(out[0]), int(out[1]), float(out[2]), out[3]))
        dt, n, rss, fmt = min(runs)
        best[name] = dt
        print(f"{fmt:22s} {name:20s} open + read all: {dt * 1e3:6.1f} ms  {n / dt / 1e9:5.2f} GB/s  "
              f"peak RSS {rss:6.0f} MB")
    print(f"# ZeRO-2 / safetensors {best['zero2/global_step1'] / best['hf2']:.2f}x, "
          f"ZeRO-3 / safetensors {best['zero3/global_step1'] / best['hf3']:.2f}x")


if __name__ == "__main__":
    main()
