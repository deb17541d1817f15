"""A chat model trained by TRL's GKDTrainer, built in code (the session fixture ``gkd_runs`` in ``conftest.py``
builds it once): the user's situation in miniature.

- a character tokenizer WITH a chat template (``<u>…\\n<a>`` turns), saved beside every model;
- 16 memorisable ``messages`` rows (``"3+5="`` -> ``"8"``); a 2-layer hidden-64 Llama teacher taught them by plain
  SFT (it knows every answer);
- W₀: a 2-layer hidden-32 Llama student taught the chat format on *products* (``"3*5="`` -> ``"15"``), saved to
  ``base/``: it answers in the right form but does not know the sums;
- ``full/``: GKD from W₀ for 64 steps (``lmbda=0, beta=0``: forward-KL distillation on the dataset's turns, what
  learns fastest at this size), checkpoints at every power of two 1…64 (what EffOPD replay needs);
- ``lora/``: the same with ``peft_config`` (LoRA r = 8 on every attention/MLP projection), adapter-only checkpoints.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

PAIRS = [(a, b) for a in (1, 3, 5, 7) for b in (2, 4, 6, 8)]
ROWS = [{"messages": [{"role": "user", "content": f"{a}+{b}="}, {"role": "assistant", "content": str(a + b)}]}
        for a, b in PAIRS]
PRODUCTS = [{"messages": [{"role": "user", "content": f"{a}*{b}="}, {"role": "assistant", "content": str(a * b)}]}
            for a, b in PAIRS]  # what W₀ knows: the chat format and other facts, not the sums
STEPS = 64


def chat_tokenizer():
    from opd_dynamics.lab.tokenizer import chat_tokenizer

    return chat_tokenizer()


def llama(tok, hidden: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, tie_word_embeddings=False))


def _teach(teacher, tok, rows=ROWS, steps: int = 150):
    """Plain SFT on the rendered conversations (+ <eos>) until the model knows them."""
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    enc = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]  # as TRL encodes chats
    width = max(map(len, enc))
    ids = torch.tensor([e + [tok.pad_token_id] * (width - len(e)) for e in enc])
    labels = ids.masked_fill(ids == tok.pad_token_id, -100)
    opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    teacher.train()
    for _ in range(steps):
        loss = teacher(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return teacher.eval()


def _gkd(out: Path, base: Path, teacher, tok, peft_config=None, lr: float = 1e-2) -> Path:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    class PowersOfTwo(TrainerCallback):  # checkpoints at 1, 2, 4, …: what EffOPD replay needs
        def on_step_end(self, args, state, control, **kw):
            control.should_save = state.global_step & (state.global_step - 1) == 0
            return control

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    student = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    args = GKDConfig(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=16, lmbda=0.0, beta=0.0,
                     max_new_tokens=4, save_strategy="no", logging_steps=8, report_to=[], use_cpu=True, disable_tqdm=True,
                     learning_rate=lr, lr_scheduler_type="constant",
                     max_length=32, seed=0, save_only_model=True, temperature=1.0)
    GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(ROWS),
               processing_class=tok, peft_config=peft_config, callbacks=[PowersOfTwo()]).train()
    return out


def build_gkd_runs(root: Path) -> dict[str, Path]:
    """{'base', 'full', 'lora', 'jsonl', 'dataset', 'teacher'}: W₀, the two GKD runs, and the rows twice."""
    from datasets import Dataset
    from peft import LoraConfig

    tok = chat_tokenizer()
    teacher = _teach(llama(tok, 64, seed=1), tok)
    teacher.save_pretrained(root / "teacher")
    tok.save_pretrained(root / "teacher")
    _teach(llama(tok, 32, seed=0), tok, PRODUCTS).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    Dataset.from_list(ROWS).save_to_disk(str(root / "rows_ds"))
    _gkd(root / "full", root / "base", teacher, tok, lr=3e-3)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"], lora_dropout=0.0,
                      task_type="CAUSAL_LM")
    _gkd(root / "lora", root / "base", teacher, tok, peft_config=lora, lr=2e-2)
    return {"base": root / "base", "full": root / "full", "lora": root / "lora", "jsonl": root / "rows.jsonl",
            "dataset": root / "rows_ds", "teacher": root / "teacher"}
