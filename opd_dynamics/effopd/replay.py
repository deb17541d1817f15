"""Offline EffOPD replay: what the search would have accepted on a finished plain-OPD run, and what it saves.

For every saved power-of-two step t = 2ⁿ whose predecessor t/2 is saved too (t = 1 uses the base W₀), the model
is set to W_t, the candidates W_t + 2k·(W_t − W_{t/2}) are scored with the same :func:`~.extrapolation.search_model`
the online search uses, and the accepted candidate's score is matched against the plain run: the earliest later
checkpoint whose score reaches it. ``steps_saved = matched_step − t`` and ``speedup = matched_step / t``.

What replay cannot see: how training would have continued from the extrapolated weights (online EffOPD keeps
compounding the gain, or may lose it), and the reference here is the plain checkpoint W_{t/2}, whereas online
EffOPD measures Δ from the weights *after* the previous extrapolation. The figures are an estimate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import OPDError
from ..io.checkpoint import Checkpoint
from ..io.discovery import Run, open_run
from ..patching import Patch, patched
from ..presets import resolve
from .extrapolation import DEFAULT_KS, SearchResult, extrapolated_names, is_power_of_two, search_model

CAVEAT = ("Replay cannot see how training would have continued from the extrapolated weights, and it measures "
          "Δ from the plain checkpoint W_{t/2} rather than from the previous extrapolation: steps saved are an estimate.")


@dataclass
class ReplayReport:
    searches: pd.DataFrame      # step, ref_step, k, multiplier, score, accepted (one row per candidate tried)
    summary: pd.DataFrame       # step, accepted_k, best_score, plain_score, matched_step, steps_saved, speedup
    plain: pd.DataFrame         # step, score of every saved plain checkpoint
    notes: list[str] = field(default_factory=lambda: [CAVEAT])
    table: pd.DataFrame | None = None  # the long table, filled by :func:`~opd_dynamics.effopd.study.replay_run`

    def format(self) -> str:
        lines = [self.summary.to_string(index=False), ""]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@torch.no_grad()
def load_weights(model: torch.nn.Module, ck: Checkpoint, patch: Patch | None = None) -> None:
    """Set a live model to a checkpoint's weights, tensor by tensor (tied heads follow their embedding).

    With ``patch`` (:class:`opd_dynamics.patching.Patch` over ``model.state_dict()``) the writes go through it, so
    the model's own weights come back when the patch is restored.
    """
    sd = model.state_dict()
    for name in ck.keys():
        if name not in sd:
            raise OPDError(f"{ck.file_of(name)}: tensor {name!r} has no counterpart in the model",
                           hint="the base model and the run must share an architecture")
        t = ck.get_tensor(name)
        if tuple(t.shape) != tuple(sd[name].shape):
            raise OPDError(f"{ck.file_of(name)}: tensor {name!r} has shape {list(t.shape)}, the model {list(sd[name].shape)}",
                           hint="check --base names the model this run started from")
        if patch is None:
            sd[name].copy_(t)
        else:
            patch.write(name, t)


def _delta(cur: Checkpoint, prev: Checkpoint, names: list[str], device) -> dict[str, torch.Tensor]:
    return {n: cur.get_tensor(n).to(device, torch.float32) - prev.get_tensor(n).to(device, torch.float32)
            for n in names}


def replay(run: Run | str | Path, score: Callable[[torch.nn.Module], float], *, base: str | Path | None = None,
           model: torch.nn.Module | None = None, ks=DEFAULT_KS, rule: str | None = None, include_bias: bool = False,
           params: str | None = None, preset: str | None = None, device: str = "cpu",
           progress: bool = True, restore: bool | None = None) -> ReplayReport:
    """Replay the EffOPD search on a saved plain-OPD run.

    Args:
        run: a run directory (``checkpoint-N/``) or an opened :class:`~opd_dynamics.io.discovery.Run`.
        score: ``score(model) -> float``, higher is better (an evaluator from :mod:`opd_dynamics.evaluators`).
        base: W₀ directory (needed for t = 1 and to build the model).
        model: a model to reuse (its architecture must match); default: loaded once from ``base``.
        rule, params: acceptance rule and extrapolated parameters; default: ``preset``'s (``paper``: ``>=``, weights;
            ``authors``: ``>``, the released code's name match — :mod:`opd_dynamics.presets`).
        restore: give ``model`` back with its own weights, bit for bit, also after an exception (costs one copy of
            them); default: when ``model`` was passed in. Otherwise it is left at the last checkpoint replayed.
    """
    chosen = resolve("effopd", preset, rule=rule, params=params or ("weights+bias" if include_bias else None))
    rule = chosen["rule"]
    extrapolated_names([], params=chosen["params"])  # a bad name fails before anything is loaded
    if not isinstance(run, Run):
        run = open_run(run, base=base, warn_missing=False)
    if restore is None:
        restore = model is not None
    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(run.base.path, torch_dtype=torch.float32)
    model.to(device).eval()
    saved = sorted(run.steps)
    targets = [t for t in saved if is_power_of_two(t) and (t == 1 or t // 2 in run.steps)]
    if not targets:
        raise OPDError(f"{run.root}: no power-of-two step with its predecessor saved (steps: {saved})",
                       hint="save checkpoints at every power of two (1, 2, 4, 8, …) to replay EffOPD")
    with patched(model.state_dict() if restore else {}) as patch:
        into = patch if restore else None
        names = extrapolated_names(dict(model.named_parameters()), params=chosen["params"])
        bar = tqdm(total=len(saved) + len(targets), desc="effopd replay", disable=not progress, leave=False)
        plain = {}
        for step in saved:
            load_weights(model, run.steps[step], into)
            plain[step] = float(score(model))
            bar.update(1)
        rows, summary = [], []
        for t in targets:
            prev = run.base if t == 1 else run.steps[t // 2]
            load_weights(model, run.steps[t], into)
            res: SearchResult = search_model(model, _delta(run.steps[t], prev, names, device), score, ks=ks, rule=rule,
                                             step=t, keep=False)
            bar.update(1)
            for i, s in enumerate(res.scores):
                k = 0 if i == 0 else res.ks[i - 1]
                rows.append({"step": t, "ref_step": t // 2, "k": k, "multiplier": 2 * k, "score": s,
                             "accepted": k == res.accepted_k})
            later = [s for s in saved if s > t and plain[s] >= res.best]
            matched = t if res.accepted_k == 0 else (later[0] if later else None)
            summary.append({"step": t, "accepted_k": res.accepted_k, "best_score": res.best, "plain_score": plain[t],
                            "matched_step": matched if matched is not None else math.nan,
                            "steps_saved": (matched - t) if matched is not None else math.nan,
                            "speedup": (matched / t) if matched is not None else math.nan})
        bar.close()
    report = ReplayReport(pd.DataFrame(rows), pd.DataFrame(summary),
                          pd.DataFrame({"step": list(plain), "score": list(plain.values())}))
    report.notes.append(f"search: accept if {rule} the best so far; extrapolated: {chosen['params']} "
                        f"({len(names)} tensors)")
    unmatched = report.summary[report.summary.matched_step.isna()]
    if len(unmatched):
        report.notes.append(f"at steps {unmatched.step.tolist()} the accepted candidate beats every later plain "
                            f"checkpoint: the saving exceeds the run (≥ {saved[-1]} − t steps)")
    skipped = [t for t in saved if is_power_of_two(t) and t not in targets]
    if skipped:
        report.notes.append(f"steps {skipped} skipped: their predecessor t/2 is not saved")
    return report
