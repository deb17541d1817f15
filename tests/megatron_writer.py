"""Re-save an HF Llama safetensors run as Megatron-core ``torch_dist`` checkpoints, tensor parallel 2, on CPU.

megatron-core (0.16) builds a ``GPTModel`` with ``get_gpt_layer_local_spec`` on 2 gloo ranks (TP = 2); each
step's HF weights are fused the way Megatron holds them (q/k/v interleaved per query group, ``linear_fc1`` =
gate;up) and sliced to each rank's tensor-parallel part, then ``dist_checkpointing.save(
model.sharded_state_dict(prefix="model."), run/iter_000000N)`` writes the checkpoint, with
``latest_checkpointed_iteration.txt`` beside it. Rank 0 also saves Megatron's own logits for a fixed input
(``logits.pt``) so a test can compare them with the HF model's.

megatron-core hard-codes three CUDA calls on this path; they are replaced at run time (``torch.cuda.synchronize``
as a no-op, ``torch.cuda.current_device`` answering "cpu", the CUDA RNG tracker's ``fork`` as a null context). No
transformer_engine, apex or NCCL is needed. Run as a script (``python megatron_writer.py SRC_RUN DST``).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path

import torch

TOKENS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _patch_cuda() -> None:
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"  # used as a device argument
    from megatron.core.tensor_parallel import random as mrandom

    mrandom.CudaRNGStatesTracker.fork = lambda self, *a, **k: contextlib.nullcontext()


def to_megatron(hf: dict, cfg: dict) -> dict[str, torch.Tensor]:
    """Full (unsharded) Megatron tensors, per layer, from HF Llama/Qwen2 tensors (the inverse of the reader)."""
    h, nq, ng = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or h // nq
    out = {"embedding.word_embeddings.weight": hf["model.embed_tokens.weight"],
           "decoder.final_layernorm.weight": hf["model.norm.weight"],
           "output_layer.weight": hf["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p, m = f"model.layers.{i}.", f"decoder.layers.{i}."
        q = hf[p + "self_attn.q_proj.weight"].view(ng, nq // ng, d, h)
        k = hf[p + "self_attn.k_proj.weight"].view(ng, 1, d, h)
        v = hf[p + "self_attn.v_proj.weight"].view(ng, 1, d, h)
        out[m + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], 1).reshape(-1, h)
        out[m + "self_attention.linear_proj.weight"] = hf[p + "self_attn.o_proj.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([hf[p + "mlp.gate_proj.weight"], hf[p + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = hf[p + "mlp.down_proj.weight"]
        out[m + "input_layernorm.weight"] = hf[p + "input_layernorm.weight"]
        out[m + "pre_mlp_layernorm.weight"] = hf[p + "post_attention_layernorm.weight"]
    return out


def _local(name: str, t: torch.Tensor, rank: int, tp: int) -> torch.Tensor:
    """This rank's tensor-parallel part of a full Megatron tensor."""
    if name.endswith("linear_fc1.weight"):  # each rank holds [gate part; up part]
        g, u = t.chunk(2)
        return torch.cat([g.chunk(tp)[rank], u.chunk(tp)[rank]])
    if name.endswith(("linear_qkv.weight", "word_embeddings.weight", "output_layer.weight")):
        return t.chunk(tp)[rank]  # column parallel (qkv: whole query groups per rank)
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return t.chunk(tp, dim=1)[rank]  # row parallel
    return t


def _rank(rank: int, world: int, port: int, src: str, dst: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch.distributed as dist
    import torch.nn.functional as F
    from safetensors.torch import load_file

    _patch_cuda()
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=world)
        steps = sorted(p for p in Path(src).iterdir() if p.name.startswith("checkpoint-"))
        cfg = json.loads((steps[0] / "config.json").read_text())
        tcfg = TransformerConfig(
            num_layers=cfg["num_hidden_layers"], hidden_size=cfg["hidden_size"],
            num_attention_heads=cfg["num_attention_heads"], num_query_groups=cfg["num_key_value_heads"],
            ffn_hidden_size=cfg["intermediate_size"], kv_channels=cfg.get("head_dim"),
            normalization="RMSNorm", layernorm_epsilon=cfg["rms_norm_eps"], gated_linear_unit=True,
            activation_func=F.silu, add_bias_linear=False, use_cpu_initialization=True,
            params_dtype=torch.float32, hidden_dropout=0.0, attention_dropout=0.0,
            tensor_model_parallel_size=world)
        model = GPTModel(config=tcfg, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
                         vocab_size=cfg["vocab_size"], max_sequence_length=cfg["max_position_embeddings"],
                         position_embedding_type="rope", rotary_base=int(cfg.get("rope_theta", 10000)),
                         share_embeddings_and_output_weights=False, parallel_output=False)
        for step_dir in steps:
            step = int(step_dir.name.split("-")[1])
            full = to_megatron(load_file(step_dir / "model.safetensors"), cfg)
            local = {k: _local(k, v, rank, world) for k, v in full.items()}
            missing, unexpected = model.load_state_dict(local, strict=False)
            assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
            out = Path(dst) / f"iter_{step:07d}"
            out.mkdir(parents=True, exist_ok=True)
            dist_checkpointing.save(model.sharded_state_dict(prefix="model."), str(out))
            if rank == 0:
                (Path(dst) / "latest_checkpointed_iteration.txt").write_text(str(step))
            if step_dir == steps[-1]:
                ids = torch.tensor(TOKENS)
                s = ids.shape[1]
                with torch.no_grad():
                    logits = model(ids, torch.arange(s)[None], torch.ones(1, 1, s, s, dtype=torch.bool).triu(1))
                if rank == 0:
                    torch.save({"step": step, "tokens": ids, "logits": logits.detach()}, Path(dst) / "logits.pt")
            dist.barrier()
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def _moe_rank(rank: int, port: int, dst: str) -> None:
    """One rank, 2 layers × 2 experts (SequentialMLP): the checkpoint and the model's own per-expert tensors."""
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch.distributed as dist
    import torch.nn.functional as F

    _patch_cuda()
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        parallel_state.initialize_model_parallel()
        cfg = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                                ffn_hidden_size=48, kv_channels=8, normalization="RMSNorm", gated_linear_unit=True,
                                activation_func=F.silu, add_bias_linear=False, use_cpu_initialization=True,
                                params_dtype=torch.float32, num_moe_experts=2, moe_router_topk=2,
                                moe_ffn_hidden_size=24)
        model = GPTModel(config=cfg, transformer_layer_spec=get_gpt_layer_local_spec(num_experts=2,
                                                                                     normalization="RMSNorm"),
                         vocab_size=64, max_sequence_length=64, position_embedding_type="rope",
                         share_embeddings_and_output_weights=False)
        out = Path(dst) / "iter_0000001"
        out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v for k, v in model.state_dict().items() if "_extra_state" not in k}, Path(dst) / "model_sd.pt")
        dist_checkpointing.save(model.sharded_state_dict(prefix="model."), str(out))
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def write_moe(dst: Path) -> Path:
    """A tiny Megatron MoE checkpoint ``dst/iter_0000001/`` and the model's own state dict ``dst/model_sd.pt``."""
    import torch.multiprocessing as mp

    mp.spawn(_moe_rank, args=(_port(), str(dst)), nprocs=1)
    return Path(dst)


def write(src_run: Path, dst: Path, world: int = 2) -> Path:
    """Write every ``checkpoint-N/`` of ``src_run`` as ``dst/iter_000000N/``; return ``dst``."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(world, _port(), str(src_run), str(dst)), nprocs=world)
    return Path(dst)


if __name__ == "__main__":
    write(Path(sys.argv[1]), Path(sys.argv[2]))
