"""TRL runs: on-policy distillation (GKDTrainer, lmbda=1, beta=1) against SFT (SFTTrainer on the teacher's answers)
from one Qwen2-shaped W₀, analysed with the default (subspace) alignment, subspace locking and signal_rank.

Usage: python bench/trl_runs.py OUT [--seeds 0,1,2] [--steps 256] [--lr 1e-3]
Prints a Markdown table (the "TRL runs" section of docs/reference-runs.md), writes OUT/seed-S/{teacher,base,
runs/opd,runs/sft,results,summary.json} and OUT/trl_runs_alignment.png (``plots.alignment_curves`` of all seeds). Everything is built in code and offline: a character tokenizer with a chat
template, Qwen2 models from configs (q/k/v biases, grouped-query attention), 100 ``messages`` rows
``"3+5="`` -> ``"8"``.

Per seed: a hidden-128 teacher is taught the sums by plain SFT until it answers all of them; W₀ (hidden 64,
2 layers, 2 KV heads) is taught the chat format on *products* only, so it answers in form but not the sums. Then,
same rows, same steps (256), same constant learning rate (1e-3), same batch (16 prompts), AdamW, checkpoints at
every power of two and every T/8 steps:

- ``opd``: TRL ``GKDTrainer`` with ``lmbda=1`` (the student's own samples, T = 1) and ``beta=1`` (reverse KL
  to the teacher, per token, full vocabulary): on-policy distillation (GKD, arXiv 2306.13649 §3);
- ``sft``: TRL ``SFTTrainer`` on prompt/completion rows whose completion is the teacher's greedy answer
  (completion-only loss).

The analysis is ``opd_dynamics.analyze`` with the default specs (docs/metrics.md): ``alignment_to_final`` (top-20
left subspace similarity with the final update, EffOPD arXiv 2605.11739 Fig. 4b), ``subspace_locking`` (top-16
right), each with its chance row K/d, ``spectral_ratio`` (σ₁/‖ΔW‖_F), ``effective_rank`` and ``signal_rank``.
Means over the 14 attention + MLP matrices of the student. One torch thread.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PAIRS = [(a, b) for a in range(10) for b in range(10)]
METRICS = ["alignment_to_final", "alignment_to_final:mode=paired", "subspace_locking", "spectral_ratio",
           "effective_rank", "signal_rank"]


def turn(prompt: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}


SUMS = [turn(f"{a}+{b}=", str(a + b)) for a, b in PAIRS]
PRODUCTS = [turn(f"{a}*{b}=", str(a * b)) for a, b in PAIRS]   # what W₀ knows: the format, not the sums


def tokenizer():
    from opd_dynamics.lab.tokenizer import chat_tokenizer

    return chat_tokenizer()


def qwen2(tok, hidden: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))


@torch.no_grad()
def answers(model, tok, rows) -> list[str]:
    """Greedy answers (up to the first newline) to the rows' user turns, encoded as TRL encodes them."""
    prompts = [tok.apply_chat_template(r["messages"][:1], tokenize=False, add_generation_prompt=True) for r in rows]
    enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    out = model.eval().generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    new = tok.batch_decode(out[:, enc.input_ids.shape[1]:], skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in new]


def accuracy(model, tok, rows=SUMS) -> float:
    got = answers(model, tok, rows)
    return sum(g == r["messages"][1]["content"] for g, r in zip(got, rows)) / len(rows)


def teach(model, tok, rows, max_steps: int, target: float | None = None, lr: float = 1e-3):
    """Plain full-batch SFT on the rendered turns (+ <eos>); stops early once ``target`` accuracy is reached."""
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    enc = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in texts]
    width = max(map(len, enc))
    ids = torch.tensor([e + [tok.pad_token_id] * (width - len(e)) for e in enc])
    labels = ids.masked_fill(ids == tok.pad_token_id, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for step in range(1, max_steps + 1):
        model.train()
        loss = model(input_ids=ids, attention_mask=(ids != tok.pad_token_id).long(), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if target is not None and step % 50 == 0 and accuracy(model, tok, rows) >= target:
            break
    return model.eval(), step


def saved_steps(steps: int) -> set[int]:
    """Every power of two up to ``steps`` and every ``steps // 8``: the early steps and an even spread."""
    every = max(1, steps // 8)
    return {2 ** i for i in range(steps.bit_length())} | set(range(every, steps + 1, every)) | {steps}


def _saver(steps: int):
    from transformers import TrainerCallback

    save = saved_steps(steps)

    class Save(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            control.should_save = state.global_step in save
            return control

    return Save()


def _common(out: Path, steps: int, lr: float, seed: int) -> dict:
    return dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=16, learning_rate=lr,
                lr_scheduler_type="constant", save_strategy="no", save_only_model=True, logging_steps=8,
                report_to=[], use_cpu=True, disable_tqdm=True, max_length=32, seed=seed)


def run_opd(out: Path, base: Path, teacher, tok, steps: int, lr: float, seed: int):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    student = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    args = GKDConfig(**_common(out, steps, lr, seed), lmbda=1.0, beta=1.0, temperature=1.0, max_new_tokens=4)
    trainer = GKDTrainer(model=student, teacher_model=teacher, args=args, train_dataset=Dataset.from_list(SUMS),
                         processing_class=tok, callbacks=[_saver(steps)])
    trainer.train()
    return trainer.model


def run_sft(out: Path, base: Path, teacher, tok, steps: int, lr: float, seed: int):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    said = answers(teacher, tok, SUMS)
    rows = [{"prompt": r["messages"][:1], "completion": [{"role": "assistant", "content": a}]}
            for r, a in zip(SUMS, said)]
    student = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    args = SFTConfig(**_common(out, steps, lr, seed), completion_only_loss=True)
    trainer = SFTTrainer(model=student, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         callbacks=[_saver(steps)])
    trainer.train()
    return trainer.model


def table_steps(steps: int) -> list[int]:
    """The steps the table shows: 1, 4, 16, T/4 (those before T) and T."""
    return sorted({t for t in (1, 4, 16, steps // 4) if 1 <= t < steps} | {steps})


def one_seed(root: Path, seed: int, steps: int, lr: float) -> dict:
    import opd_dynamics as od
    from transformers import AutoModelForCausalLM

    tok = tokenizer()
    t0, c0 = time.time(), time.process_time()
    teacher, t_steps = teach(qwen2(tok, 128, seed=1000 + seed), tok, SUMS, max_steps=400, target=1.0)
    base, b_steps = teach(qwen2(tok, 64, seed=seed), tok, PRODUCTS, max_steps=150)
    teacher.save_pretrained(root / "teacher")
    base.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    acc = {"teacher": accuracy(teacher, tok), "base": accuracy(base, tok),
           "base on products": accuracy(base, tok, PRODUCTS)}
    wall = {"teacher + W₀": time.time() - t0}
    for arm, fn in (("opd", run_opd), ("sft", run_sft)):
        t = time.time()
        fn(root / "runs" / arm, root / "base", teacher, tok, steps, lr, seed)
        wall[arm] = time.time() - t
        for step in table_steps(steps):   # greedy accuracy on the 100 sums at the table's checkpoints
            model = AutoModelForCausalLM.from_pretrained(str(root / "runs" / arm / f"checkpoint-{step}"))
            acc[f"{arm}@{step}"] = accuracy(model, tok)
    t = time.time()
    df = od.analyze([root / "runs" / "opd", root / "runs" / "sft"], base=root / "base", names=["opd", "sft"],
                    metrics=METRICS, select=["kind=body", "matrix"], out=root / "results", progress=False)
    wall["analyze"] = time.time() - t
    info = {"seed": seed, "accuracy": acc, "teacher_steps": t_steps, "base_steps": b_steps, "wall_s": wall,
            "cpu_s": time.process_time() - c0}
    (root / "summary.json").write_text(json.dumps(info, indent=1))
    return {**info, "table": df}


def rows_of(info: dict) -> list[list[str]]:
    """One Markdown row per (run, table step): means over the attention + MLP matrices, chance in brackets."""
    from opd_dynamics.table import BODY_KINDS

    df = info["table"]
    body = df[df.kind.isin(BODY_KINDS)]
    mean = body.groupby(["run", "step", "metric"]).value.mean()
    last = int(body.step.max())
    out = []
    for run in ("opd", "sft"):
        m = lambda metric, step: float(mean.get((run, step, metric), float("nan")))  # noqa: E731
        for step in table_steps(last):
            pair = lambda x: "—" if step == last else f"{m(x, step):.2f} ({m(x + '_chance', step):.2f})"  # noqa: E731
            paired = "—" if step == last else (f"{m('alignment_to_final[mode=paired]', step):.2f} "
                                               f"({m('alignment_to_final_chance[mode=paired]', step):.2f})")
            out.append([str(info["seed"]), run, str(step), pair("alignment_to_final"), paired, pair("subspace_locking"),
                        f"{100 * m('spectral_ratio', step):.1f}%", f"{m('effective_rank', step):.1f}",
                        f"{m('signal_rank', step):.1f}", f"{m('signal_effective_rank', step):.1f}",
                        f"{info['accuracy'][f'{run}@{step}']:.2f}"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    a = p.parse_args()
    torch.set_num_threads(1)
    load, t0 = os.getloadavg(), time.time()
    infos = [one_seed(a.out / f"seed-{s}", int(s), a.steps, a.lr) for s in a.seeds.split(",")]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} cores, 1 torch thread; load average "
          f"before {load[0]:.1f}, after {os.getloadavg()[0]:.1f}; total wall {time.time() - t0:.0f} s")
    for i in infos:
        print(f"seed {i['seed']}: accuracy on the 100 sums {i['accuracy']}; teacher {i['teacher_steps']} SFT steps, "
              f"W₀ {i['base_steps']}; wall s {({k: round(v, 1) for k, v in i['wall_s'].items()})}; "
              f"CPU {i['cpu_s']:.0f} s")
    cols = ["seed", "run", "step", "sim (chance)", "paired (chance)", "lock (chance)", "σ₁/‖ΔW‖_F", "eff. rank",
            "signal rank", "eff. rank of signal", "accuracy (100 sums)"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for i in infos:
        for r in rows_of(i):
            print("| " + " | ".join(r) + " |")
    figure(infos, a.out / "trl_runs_alignment.png")


def figure(infos: list[dict], path: Path) -> None:
    """Alignment and locking against training progress, OPD and SFT, every seed pooled (mean, interquartile band)."""
    import pandas as pd

    from opd_dynamics import plots

    fig = plots.alignment_curves(pd.concat([i["table"] for i in infos]), ["alignment_to_final", "subspace_locking"])
    fig.suptitle(f"TRL runs (Qwen2 student, {len(infos)} seeds): OPD (GKD λ=1, β=1) vs SFT", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
