"""The patch-score-restore engine: load W₀ once, apply a plan in place, score, restore bit for bit, next plan.

For each stored tensor of the base model, :mod:`opd_dynamics.naming` splits it into modules (GPT-2's fused
``c_attn`` into q/k/v, in the (out, in) orientation) and the plan's first matching rule picks each module's edit
(:mod:`opd_dynamics.plans`). Only tensors with an edit that reads ΔW are touched: their W₀ is kept (a copy of the
live parameter), the source checkpoint's tensor (and any other step an edit needs, e.g. ΔW_T for a norm rescale) is
read through :class:`~opd_dynamics.io.checkpoint.Checkpoint` (a LoRA adapter step answers W₀ + s·B·A merged
as PEFT merges it; a tensor no adapter it reads moves stays at W₀ and is not touched), every edited module is
written as W = W₀ + edit(ΔW) computed in float64 and rounded once to the parameter dtype (so ``identity`` gives W_T exactly and
``revert`` gives W₀ exactly), and on leaving the ``with`` block the kept copies are copied back (:func:`opd_dynamics.patching.patched`,
``try/finally`` as TransformerLens undoes hooks): the model is bitwise W₀ again. Peak extra memory: the touched tensors' W₀ copies plus
a few float64 copies of the largest tensor, plus the read cache (``cache_mb``).

Results are rows of the long table (:mod:`opd_dynamics.table`), one per (plan, evaluator):

========== ===========================================================================================
column     value
========== ===========================================================================================
run        the run's name
step       the checkpoint that supplied ΔW (0 when the plan reads none, e.g. the base reference)
ref_step   0 (edits are relative to W₀)
module     ``plan:<study>/<variant>/<x>`` (:attr:`Plan.module`; read back with :func:`study_frame`)
layer      the sliding-window centre (0-based), else <NA>
kind       <NA>
metric     the evaluator's name (``accuracy``, ``loglik``, ``kl`` — kl is stored as −KL), plus one row
           ``update_norm`` = global ‖edited ΔW‖_F over all modules (0 for modules left at W₀)
value      the score
========== ===========================================================================================

>>> import tempfile
>>> from opd_dynamics.synthetic import make_synthetic_runs
>>> runs = make_synthetic_runs(tempfile.mkdtemp(), steps=(1, 2), layers=1, hidden=16)
>>> eng = InterventionEngine(runs["base"]); run = eng.open_run(runs["opd"])
>>> before = {k: v.clone() for k, v in eng.model.state_dict().items()}
>>> with eng.applied(Plan("demo", rules=(Rule((), EditSpec("scale", {"alpha": 0.5})),)), run) as model:
...     changed = not torch.equal(model.model.layers[0].mlp.up_proj.weight, before["model.layers.0.mlp.up_proj.weight"])
>>> changed, all(torch.equal(v, before[k]) for k, v in eng.model.state_dict().items())
(True, True)
"""
from __future__ import annotations

import math
import os
import time
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from .device import resolve_device
from . import linalg
from .edits import BuiltEdit, EditSpec
from .errors import CheckpointError, OPDError
from .io.checkpoint import Checkpoint
from .io.discovery import Run, open_run, weights_dir
from .naming import Part, parts, view
from .patching import Patch, patched
from .plans import PLAN_PREFIX, Plan, Rule, parse_label, resolve_step
from .table import from_rows

PathLike = str | os.PathLike
UPDATE_NORM = "update_norm"

__all__ = ["InterventionEngine", "Plan", "Rule", "EditSpec", "PatchInfo", "study_frame", "UPDATE_NORM"]


@dataclass
class PatchInfo:
    """What one applied plan did: tensors written, checkpoint reads, the global ‖edited ΔW‖_F, the steps used."""

    tensors: list[str] = field(default_factory=list)
    reads: int = 0
    update_norm: float = 0.0
    step: int = 0
    steps: dict[str, int] = field(default_factory=dict)


class InterventionEngine:
    """One base model W₀ in memory, edited in place plan after plan.

    Args:
        base: the W₀ model directory (HF layout: ``config.json`` + safetensors; tokenizer files too, unless
            ``tokenizer`` names another directory).
        device: ``cpu`` or ``cuda[:i]`` (``auto``: CUDA when available).
        dtype: the dtype the model is loaded in: ``auto`` (default) is bfloat16 on CUDA and float32 on the CPU;
            edits are still computed in float64 and rounded once to it.
        attn_implementation: passed to ``from_pretrained``; default ``eager`` on the CPU (5× faster decoding of
            tiny left-padded batches, see lab.models) and transformers' default on CUDA.
        cache_mb: keep up to this many MB of checkpoint tensors between plans (0: read every time).
    """

    def __init__(self, base: PathLike, *, device: str = "cpu", dtype: str = "auto",
                 attn_implementation: str | None = None, tokenizer: PathLike | None = None, cache_mb: float = 256,
                 allow_pickle: bool = False):
        from transformers import AutoModelForCausalLM

        base = Path(base)
        self.base = Checkpoint(weights_dir(base) or base, allow_pickle=allow_pickle)
        self.device = resolve_device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        attn = attn_implementation or ("eager" if self.device.type == "cpu" else None)
        kw = {"attn_implementation": attn} if attn else {}
        try:
            self.model = AutoModelForCausalLM.from_pretrained(str(self.base.path), dtype=self.dtype, **kw)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.base.path}: transformers cannot load this model ({str(e).splitlines()[0][:200]})",
                                  hint="point --base at a Hugging Face model directory with config.json") from None
        self.model.to(self.device).eval()
        self._tok_dir, self._tokenizer = Path(tokenizer) if tokenizer else self.base.path, None
        self.cache_bytes = int(cache_mb * 2 ** 20)
        self._cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._cached = 0
        self._params = self._map_parameters()
        self.stats: Counter = Counter()  # seconds editing / restoring / evaluating, plans, reads

    @property
    def tokenizer(self):
        """The base directory's tokenizer (or ``tokenizer=``'s), loaded on first use."""
        if self._tokenizer is None:
            from transformers import PreTrainedTokenizerFast

            if not (self._tok_dir / "tokenizer.json").exists():
                raise OPDError(f"{self._tok_dir}: no tokenizer.json", hint="pass --tokenizer DIR with the model's tokenizer")
            # never AutoTokenizer: in transformers 5 it may substitute another tokenizer class (see lab.tokenizer)
            self._tokenizer = PreTrainedTokenizerFast.from_pretrained(str(self._tok_dir))
        return self._tokenizer

    # -- names -----------------------------------------------------------------------------------------------------
    def _map_parameters(self) -> dict[str, torch.Tensor]:
        """Stored tensor name -> the live parameter (or buffer) holding it, shapes checked."""
        live = self.model.state_dict(keep_vars=True)
        out = {}
        for name in self.base.keys():
            if not self.base.dtype(name).is_floating_point:
                continue
            key = name if name in live else None
            if key is None:  # a prefix added or dropped by the model class (e.g. "model." in some families)
                cands = [k for k in live if k.endswith("." + name) or name.endswith("." + k)]
                key = cands[0] if len(cands) == 1 else None
            if key is None:
                raise CheckpointError(f"{self.base.file_of(name)}: tensor {name!r} has no parameter in the loaded "
                                      f"{type(self.model).__name__}", hint="check the directory's config.json matches its weights")
            t = live[key]
            if tuple(t.shape) != tuple(self.base.shape(name)):
                raise CheckpointError(f"{self.base.file_of(name)}: tensor {name!r} is {list(self.base.shape(name))}, "
                                      f"the model's {key} is {list(t.shape)}", hint="re-save the model")
            out[name] = t
        return out

    def open_run(self, root: PathLike, *, name: str | None = None, steps: Sequence[int] | None = None) -> Run:
        """Discover a run whose base is this engine's W₀."""
        return open_run(root, base=self.base.path, name=name, steps=list(steps) if steps else None, warn_missing=False)

    # -- planning ----------------------------------------------------------------------------------------------------
    def assignments(self, plan: Plan) -> dict[str, list[tuple[Part, BuiltEdit]]]:
        """Tensor name -> [(module, edit)] for every module the plan edits (reverts included); checks every rule
        matches something and that matrix-only edits meet matrices."""
        rules = [(r, r.selector, r.edit.build()) for r in plan.rules]
        used = [0] * len(rules)
        out: dict[str, list[tuple[Part, BuiltEdit]]] = {}
        config = self.base.config
        for name in self._params:
            shape = tuple(self.base.shape(name))
            for part in parts(name, shape, config):
                for i, (rule, sel, built) in enumerate(rules):
                    if sel.matches(part, len(shape)):
                        used[i] += 1
                        if built.info.matrix and len(shape) != 2:
                            raise OPDError(f"plan {plan.module}: edit {rule.edit.name!r} needs a matrix, "
                                           f"{part.name} is {len(shape)}-D", hint="add the clause `matrix` to its select")
                        out.setdefault(name, []).append((part, built))
                        break
        for (rule, _, _), n in zip(rules, used):
            if n == 0:
                raise OPDError(f"plan {plan.module}: rule select={list(rule.select)} matches no module of "
                               f"{self.base.path}", hint="check kind=, layer= (0-based, the model has "
                               f"{self.n_layers} layers) and name=")
        return out

    @property
    def n_layers(self) -> int:
        return int(self.base.config.get("num_hidden_layers") or self.base.config.get("n_layer") or 0)

    # -- reading -----------------------------------------------------------------------------------------------------
    def _read(self, ck: Checkpoint, name: str, info: PatchInfo) -> torch.Tensor:
        key = (str(ck.path), name)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        t = ck.get_tensor(name).to(self.device)
        info.reads += 1
        nbytes = t.numel() * t.element_size()
        if nbytes <= self.cache_bytes:
            self._cache[key] = t
            self._cached += nbytes
            while self._cached > self.cache_bytes:
                _, old = self._cache.popitem(last=False)
                self._cached -= old.numel() * old.element_size()
        return t

    # -- the context manager -----------------------------------------------------------------------------------------
    @contextmanager
    def applied(self, plan: Plan, run: Run) -> Iterator[torch.nn.Module]:
        """``with engine.applied(plan, run) as model:`` — the model edited by ``plan``; restored bitwise on exit.

        ``engine.last`` holds the :class:`PatchInfo` of the plan.
        """
        if Path(run.base.path).resolve() != Path(self.base.path).resolve():
            raise OPDError(f"run {run.name!r} starts from {run.base.path}, the engine holds {self.base.path}",
                           hint="open the run with engine.open_run(...) or build an engine for its base")
        t0 = time.perf_counter()
        with patched(self._params) as patch:  # restores also when _patch raises half-way
            self.last = self._patch(plan, run, patch)
            self.stats["edit_s"] += time.perf_counter() - t0
            try:
                yield self.model
            finally:
                t1 = time.perf_counter()
                patch.restore()
                self.stats["restore_s"] += time.perf_counter() - t1

    @torch.no_grad()
    def _patch(self, plan: Plan, run: Run, patch: Patch) -> PatchInfo:
        steps = sorted(run.steps)
        source = resolve_step(steps, plan.source)
        assign = self.assignments(plan)
        info = PatchInfo(step=0, steps={"source": source})
        total = 0.0
        for name, items in assign.items():
            items = [(p, e) for p, e in items if e.info.reads_delta]
            if not items:  # reverts only: W₀ is already there
                continue
            if not self._moves(run, steps, source, items, name):  # an adapter leaves it alone: ΔW = 0, stays W₀
                continue
            param = self._params[name]
            w0 = param.detach().to(torch.float64)
            src = w0 if source == 0 else self._read(run.steps[source], name, info).to(torch.float64)
            others: dict[str, torch.Tensor] = {}
            for ref in {r for _, e in items for r in e.needs}:
                s = resolve_step(steps, ref)
                info.steps[ref] = s
                others[ref] = src if s == source else (w0 if s == 0 else
                                                       self._read(run.steps[s], name, info).to(torch.float64))
            new = w0.clone()
            for part, built in items:
                w0p = view(w0, part)
                delta = view(src, part) - w0p
                extra = {r: view(t, part) - w0p for r, t in others.items() if r in built.needs}
                nd = built(w0p, delta, extra)
                total += linalg.frobenius(nd) ** 2
                view(new, part).copy_(w0p + nd)
            patch.write(name, new.to(param.dtype))
            info.tensors.append(name)
        info.step = source if info.tensors else 0
        info.update_norm = math.sqrt(total)
        self.stats["reads"] += info.reads
        self.stats["plans"] += 1
        return info

    @staticmethod
    def _moves(run: Run, steps: list[int], source: int, items, name: str) -> bool:
        """False when every checkpoint the edits read is partial (a LoRA adapter) and leaves ``name`` alone."""
        needed = {source} | {resolve_step(steps, r) for _, e in items for r in e.needs}
        cks = [run.steps[s] for s in needed if s != 0]
        return not cks or any(not getattr(ck, "partial", False) or name in ck for ck in cks)

    # -- scoring -----------------------------------------------------------------------------------------------------
    def evaluate(self, run: Run, plans: Sequence[Plan], evaluators: Sequence, *, progress: bool = True) -> pd.DataFrame:
        """Score every plan with every evaluator (``ev(model) -> float``); the long table described above."""
        rows = []
        for plan in tqdm(plans, desc=f"plans ({run.name})", disable=not progress, unit="plan"):
            with self.applied(plan, run) as model:
                t0 = time.perf_counter()
                scores = [(ev.name, ev(model)) for ev in evaluators]
                self.stats["eval_s"] += time.perf_counter() - t0
            info = self.last
            for metric, value in scores + [(UPDATE_NORM, info.update_norm)]:
                rows.append((run.name, info.step, 0, plan.module, plan.layer, None, None, metric, value))
        return from_rows(rows)


def study_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The plan rows of a long table as the plots' study frame (``study, run, variant, x, metric, value,
    update_norm``; see :mod:`opd_dynamics.frames`)."""
    from .frames import from_records

    plans = df[df["module"].str.startswith(PLAN_PREFIX)]
    norms = plans[plans["metric"] == UPDATE_NORM].set_index(["run", "module"])["value"]
    records = []
    for r in plans[plans["metric"] != UPDATE_NORM].itertuples(index=False):
        study, variant, x = parse_label(r.module)
        records.append({"study": study, "run": r.run, "variant": variant, "x": x, "metric": r.metric,
                        "value": r.value, "update_norm": norms.get((r.run, r.module), math.nan)})
    out = from_records(records)
    if "update_norm" not in out:
        out["update_norm"] = pd.Series(dtype="float64")
    return out
