"""Write real DeepSpeed ZeRO checkpoints of a tiny Llama on CPU (two gloo ranks), for tests/test_deepspeed.py.

    DS_ACCELERATOR=cpu python tests/ds_writer.py OUT [PORT]

Each run in ``RUNS`` trains the same 2-layer Llama (hidden 32) for ``STEPS`` optimizer steps from one seed with
``deepspeed.initialize`` and a plain ``torch.optim.AdamW`` (no DeepSpeed op to compile) and saves after every step
with ``engine.save_checkpoint(dir, tag="global_stepN")`` in one of two layouts:

- ``openrlhf``: ``OUT/<run>/_actor/global_stepN/`` (``latest`` and ``zero_to_fp32.py`` beside the tags);
- ``hf``: ``OUT/<run>/checkpoint-N/global_stepN/`` with ``config.json`` and the model as ``model.safetensors``
  beside it, the layout HF Trainer + DeepSpeed leaves (here around a direct DeepSpeed save, so that the fp32
  trajectory can be gathered after every step).

``TRAINER`` runs are written by a real ``transformers.Trainer`` with a DeepSpeed config (``OUT/<run>/checkpoint-N/``
with ``global_stepN/``, ``latest``, ``zero_to_fp32.py`` and, for ZeRO-2, ``model.safetensors``; fp32: the
Trainer refuses bf16 without a GPU).

fp32 runs also write the gathered full weights after every step as HF safetensors (``OUT/<run>-hf/checkpoint-N/``),
and every run writes its step-0 model to ``OUT/base/`` (the same for all: one seed): the trajectory in both formats.
DeepSpeed's CPU accelerator would build its shared-memory all-reduce op (~80 s of C++); gloo is used instead.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

STEPS = 3
#: name -> (ZeRO stage, bf16, layout, tie embeddings, frozen parameter or None)
RUNS = {
    "z2": (2, False, "openrlhf", False, None),
    "z3": (3, False, "hf", False, None),
    "z2bf16": (2, True, "hf", False, "model.norm.weight"),
    "z3bf16": (3, True, "openrlhf", True, "model.layers.0.input_layernorm.weight"),
    "z1bf16": (1, True, "openrlhf", False, None),
}

#: real HF Trainer runs: name -> (ZeRO stage, bf16)
TRAINER = {"trainer_z2": (2, False), "trainer_z3": (3, False)}  # bf16 Trainer needs a GPU


def _config(tie: bool):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       tie_word_embeddings=tie)


def _full_state(engine, stage: int):
    """The full fp32 weights, gathered on every rank (ZeRO-3 keeps only partitions on each)."""
    import deepspeed
    import torch

    params = [p for p in engine.module.parameters()]
    if stage == 3:
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().clone().contiguous() for k, v in engine.module.state_dict().items()}
    return {k: v.detach().clone().contiguous() for k, v in engine.module.state_dict().items()
            if isinstance(v, torch.Tensor)}


def _save_hf(model_sd, config, d: Path) -> None:
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    seen, out = set(), {}
    for k, v in model_sd.items():  # save_pretrained drops tied aliases: keep the first name of a storage
        key = (v.data_ptr(), v.shape)
        if key not in seen:
            seen.add(key)
            out[k] = v.contiguous()
    save_file(out, str(d / "model.safetensors"), metadata={"format": "pt"})
    config.to_json_file(str(d / "config.json"))


def _worker(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    import deepspeed
    import torch
    from transformers import LlamaForCausalLM

    sys.modules["deepspeed.comm.torch"].build_shm_op = lambda: None  # gloo, not the compiled shm op
    out = Path(out)
    for name, (stage, bf16, layout, tie, frozen) in RUNS.items():
        torch.manual_seed(0)
        config = _config(tie)
        model = LlamaForCausalLM(config)
        if name == "z2" and rank == 0:
            _save_hf(model.state_dict(), config, out / "base")
        if frozen:
            model.get_parameter(frozen).requires_grad_(False)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        ds = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
              "bf16": {"enabled": bf16}, "steps_per_print": 10**9}
        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
        gen = torch.Generator().manual_seed(rank)
        for step in range(1, STEPS + 1):
            x = torch.randint(0, 64, (2, 8), generator=gen)
            engine.backward(engine(input_ids=x, labels=x).loss)
            engine.step()
            if layout == "openrlhf":
                engine.save_checkpoint(str(out / name / "_actor"), tag=f"global_step{step}")
            else:
                ck = out / name / f"checkpoint-{step}"
                engine.save_checkpoint(str(ck), tag=f"global_step{step}")
                sd = _full_state(engine, stage)
                if rank == 0:
                    _save_hf(sd, config, ck)  # HF Trainer's 16-bit model.safetensors beside the tag
            if not bf16:
                sd = _full_state(engine, stage)
                if rank == 0:
                    _save_hf(sd, config, out / f"{name}-hf" / f"checkpoint-{step}")
        engine.destroy() if hasattr(engine, "destroy") else None
    for name, (stage, bf16) in TRAINER.items():
        _trainer_run(out / name, stage, bf16)
    torch.distributed.barrier()


def _trainer_run(out: Path, stage: int, bf16: bool) -> None:
    import torch
    from transformers import LlamaForCausalLM, Trainer, TrainingArguments

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 4 * STEPS

        def __getitem__(self, i):
            x = torch.randint(0, 64, (8,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": x, "labels": x}

    torch.manual_seed(0)
    ds = {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
          "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True, "bf16": {"enabled": "auto"}}
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=2, max_steps=STEPS, save_steps=1,
                             save_strategy="steps", deepspeed=ds, bf16=bf16, report_to=[], learning_rate=1e-3,
                             optim="adamw_torch", disable_tqdm=True, logging_steps=10**6)
    Trainer(model=LlamaForCausalLM(_config(False)), args=args, train_dataset=Data()).train()


def main(out: str, port: int = 29533) -> None:
    import torch.multiprocessing as mp

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    mp.spawn(_worker, args=(2, out, port), nprocs=2)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 29533)
