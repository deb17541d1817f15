"""Reference runs: a teacher, a weak student W₀ and three post-training runs of W₀ — OPD, RL, SFT.

:func:`build_reference_runs` writes::

    out_dir/teacher/          plain model directory (float32), cached
    out_dir/base/             W₀ — pass it to the analysis as ``--base`` (checkpoint dtype), cached
    out_dir/runs/opd/checkpoint-N/   on-policy distillation (reverse KL to the teacher)
    out_dir/runs/rl/checkpoint-N/    GRPO with the verifier's 0/1 reward
    out_dir/runs/sft/checkpoint-N/   SFT on verifier-accepted teacher samples
    out_dir/summary.json      accuracies, validation curves, gap recovery, wall times

Teacher and W₀ carry a ``lab.json`` with a key hashed from everything that shapes them (preset
fields, seed, dtype for W₀, a version); a later call with the same key loads them instead of
training again, and a call whose whole key matches ``summary.json`` returns at once.

With ``dtype="bfloat16"``, W₀ is rounded to bf16 before the runs start (as a bf16 base model loaded
into an fp32 trainer would be), and every checkpoint is written in bf16. Training itself is fp32.

Everything is seeded (``torch.Generator``s for prompt order and sampling, seeded initialisation):
the same call on the same machine gives the same checkpoint tensors, bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..task.addition import AdditionTask
from .arms import ARMS, run_arm, torch_threads
from .checkpoints import save_model_dir, torch_dtype
from ..diagnostics import gap_recovery
from .evaluation import Evaluator, greedy_accuracy
from .loop import TrainConfig, train
from .models import build_model, load_model
from .presets import Preset, get_preset
from .sft import SFTStep
from .tokenizer import char_tokenizer

LAB_VERSION = 1


@dataclass(frozen=True)
class ReferenceRuns:
    out_dir: Path
    teacher: Path
    base: Path
    runs: dict[str, Path]         # arm -> run directory holding checkpoint-N/
    accuracy: dict[str, float]    # validation accuracy: teacher, base, and each arm's last checkpoint
    gap_recovery: dict[str, float]
    preset: str
    seed: int
    dtype: str

    @property
    def summary(self) -> Path:
        return self.out_dir / "summary.json"


def make_task(preset: str | Preset, seed: int = 0) -> AdditionTask:
    """The task a preset trains on — rebuild it to score reference models the same way."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    return AdditionTask(p.digits, p.n_train, p.n_eval, p.n_eval, seed)


def _key(**parts) -> str:
    blob = json.dumps({"version": LAB_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads((path / "lab.json").read_text())
    except (OSError, ValueError):
        return None


def _pretrain(spec, tokenizer, task, preset: Preset, steps: int, target: float, seed: int,
              desc: str, progress: bool) -> tuple[PreTrainedModel, list[dict]]:
    """SFT on worked solutions from a fresh init until validation accuracy ≥ target (or ``steps``)."""
    model = build_model(spec, tokenizer, seed)
    config = TrainConfig(steps=steps, lr=preset.pretrain_lr, warmup=min(20, steps), schedule="cosine",
                         eval_every=preset.pretrain_eval_every, stop_at_accuracy=target)
    history = train(model, tokenizer, SFTStep(tokenizer, task.examples("train"), preset.pretrain_batch, seed),
                    config, evaluate=Evaluator(tokenizer, task, task.examples("validation")),
                    desc=desc, progress=progress)
    return model, history


def _finite(x: float) -> float | None:
    return None if math.isnan(x) else x  # JSON has no NaN: "no gap to recover" is null


def _curve(history: list[dict]) -> list[list[float]]:
    return [[h["step"], h["eval_accuracy"]] for h in history if "eval_accuracy" in h]


def build_reference_runs(out_dir: str | Path, preset: str = "default", seed: int = 0, dtype: str = "float32",
                         progress: bool = True, threads: int | None = 1) -> ReferenceRuns:
    """Train (or reuse) teacher and W₀, run OPD, RL and SFT from W₀, write ``summary.json``.

    ``threads``: torch intra-op threads while training (see :func:`torch_threads`).
    """
    with torch_threads(threads):
        return _build(Path(out_dir), preset, seed, dtype, progress)


def _keys(p: Preset, seed: int, dtype: str) -> dict[str, str]:
    """Cache keys of the teacher, of W₀ and of the whole result. Each holds only what shapes its model, so changing
    the arms' settings keeps teacher and W₀."""
    fields = dataclasses.asdict(p)
    shared = {k: fields[k] for k in ("digits", "n_train", "n_eval", "pretrain_batch", "pretrain_lr",
                                     "pretrain_eval_every")}
    return {"teacher": _key(shared=shared, spec=fields["teacher"], steps=p.teacher_steps, target=p.teacher_target,
                            seed=seed, part="teacher"),
            "base": _key(shared=shared, spec=fields["student"], steps=p.base_steps, target=p.base_target,
                         seed=seed, dtype=dtype, part="base"),
            "all": _key(preset=fields, seed=seed, dtype=dtype, part="all")}


@contextlib.contextmanager
def _timed(name: str, wall: dict[str, float], cpu: dict[str, float]):
    """Wall and CPU seconds of the block (on a shared machine the wall clock measures the neighbours too)."""
    t0, c0 = time.perf_counter(), time.process_time()
    yield
    wall[name], cpu[name] = time.perf_counter() - t0, time.process_time() - c0


def _cached_model(folder: Path, key: str, pretrain, tokenizer, dtype: str) -> tuple[PreTrainedModel, dict]:
    """The model saved in ``folder`` when its key matches, else ``pretrain()`` rounded once to ``dtype`` (so runs start
    exactly from what the folder holds) and saved there; with its ``lab.json`` metadata."""
    meta = _read_meta(folder)
    if meta and meta["key"] == key:
        return load_model(folder), meta
    model, hist = pretrain()
    if dtype != "float32":
        model = model.to(torch_dtype(dtype)).to(torch.float32)
    meta = {"key": key, "train_steps": hist[-1]["step"], "curve": _curve(hist)}
    save_model_dir(model, tokenizer, folder, dtype, extra={"lab.json": meta})
    return model, meta


def _scored(name: str, model, meta: dict, tokenizer, task) -> dict:
    """The summary entry of the teacher or W₀: its metadata, size and greedy accuracy on validation and test."""
    return {"dir": name, **meta, "params": sum(x.numel() for x in model.parameters()),
            "validation_accuracy": greedy_accuracy(model, tokenizer, task, task.examples("validation")),
            "test_accuracy": greedy_accuracy(model, tokenizer, task, task.examples("test"))}


def _arm(arm: str, run_dir: Path, base, teacher, tokenizer, task, p: Preset, seed: int, dtype: str,
         teacher_acc: float, progress: bool) -> dict:
    """Train one arm from W₀ into ``run_dir`` (written beside it, renamed when complete); its summary entry."""
    tmp = run_dir.with_name(run_dir.name + ".tmp")
    for d in (tmp, run_dir):
        shutil.rmtree(d, ignore_errors=True)
    model, history = run_arm(arm, base, teacher, tokenizer, task, p, tmp, seed, dtype, progress=progress, threads=None)
    tmp.rename(run_dir)
    before, after = history[0]["eval_accuracy"], history[-1]["eval_accuracy"]
    diag = [{k: h[k] for k in h if k not in ("loss", "learning_rate", "grad_norm")}
            for h in history if "overlap_ratio" in h]
    return {"dir": f"runs/{arm}", "curve": _curve(history),
            "test_accuracy": greedy_accuracy(model, tokenizer, task, task.examples("test")),
            "gap_recovery": _finite(gap_recovery(after, before, teacher_acc)), "diagnostics": diag}


def _build(out: Path, preset: str, seed: int, dtype: str, progress: bool) -> ReferenceRuns:
    p = get_preset(preset)
    torch_dtype(dtype)  # fail before any training on a bad dtype
    keys = _keys(p, seed, dtype)
    runs = {arm: out / "runs" / arm for arm in ARMS}
    summary_path = out / "summary.json"
    if summary_path.exists() and all(r.exists() for r in runs.values()):
        summary = json.loads(summary_path.read_text())
        if summary.get("key") == keys["all"]:
            return _result(out, runs, summary, preset, seed, dtype)

    task, tokenizer = make_task(p, seed), char_tokenizer()
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    with _timed("teacher", wall, cpu):
        teacher, teacher_meta = _cached_model(out / "teacher", keys["teacher"], lambda: _pretrain(
            p.teacher, tokenizer, task, p, p.teacher_steps, p.teacher_target, seed, "teacher", progress),
            tokenizer, "float32")
        teacher.eval()
    with _timed("base", wall, cpu):
        base, base_meta = _cached_model(out / "base", keys["base"], lambda: _pretrain(
            p.student, tokenizer, task, p, p.base_steps, p.base_target, seed + 1, "base W0", progress),
            tokenizer, dtype)
    summary = {"key": keys["all"], "preset": preset, "seed": seed, "dtype": dtype, "task": task.name,
               "preset_fields": dataclasses.asdict(p),
               "splits": {s: len(task.examples(s)) for s in ("train", "validation", "test")},
               "teacher": _scored("teacher", teacher, teacher_meta, tokenizer, task),
               "base": _scored("base", base, base_meta, tokenizer, task), "runs": {}}
    for arm, run_dir in runs.items():
        with _timed(arm, wall, cpu):
            summary["runs"][arm] = _arm(arm, run_dir, base, teacher, tokenizer, task, p, seed, dtype,
                                        summary["teacher"]["validation_accuracy"], progress)
    for name, times in (("wall_seconds", wall), ("cpu_seconds", cpu)):
        summary[name] = {**{k: round(v, 1) for k, v in times.items()}, "total": round(sum(times.values()), 1)}
    tmp = summary_path.with_name("summary.json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.rename(summary_path)
    return _result(out, runs, summary, preset, seed, dtype)


def _result(out: Path, runs: dict[str, Path], summary: dict, preset: str, seed: int, dtype: str) -> ReferenceRuns:
    acc = {"teacher": summary["teacher"]["validation_accuracy"], "base": summary["base"]["validation_accuracy"]}
    acc.update({arm: r["curve"][-1][1] for arm, r in summary["runs"].items()})
    return ReferenceRuns(out, out / "teacher", out / "base", runs, acc,
                         {arm: r["gap_recovery"] for arm, r in summary["runs"].items()}, preset, seed, dtype)
