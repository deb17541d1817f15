"""Find the checkpoints of a training run in the layouts trainers really write, and its base W₀.

Layouts (step N parsed from the directory name):

- HF Trainer / TRL: ``run/checkpoint-N/`` (with DeepSpeed: ``checkpoint-N/global_stepN/``)
- verl: ``run/global_step_N/actor/huggingface/`` (HF export) or ``run/global_step_N/actor/`` (FSDP rank shards)
- torchtitan ``run/step-N/``, NeMo-RL ``run/step_N/policy/weights/``, plain ``run/stepN/``
- Megatron: ``run/iter_000000N/`` (``latest_checkpointed_iteration.txt`` beside them)
- OpenRLHF / DeepSpeed: ``run/_actor/global_stepN/`` (``latest`` beside them); ``run/_actor/`` is entered
- a directory that is itself one checkpoint (step from its name, else ``trainer_state.json``'s
  ``global_step``, else 1)
- any of these holding PEFT LoRA adapters (``adapter_model.safetensors`` + ``adapter_config.json``) instead of
  weights: a LoRA run (:mod:`opd_dynamics.io.lora`), whose base is ``--base`` or the adapter's
  ``base_model_name_or_path`` when that is a local directory; a step-0 adapter (B = 0) is dropped

What a step directory holds is decided by the one format registry (:mod:`opd_dynamics.io.formats`), which also
opens it; a checkpoint without ``config.json`` takes the base's.

Trainers never save W₀ and ``config.json`` does not name it, so the base is ``base=DIR`` when given,
else a step-0 checkpoint, else an error that says how to pass one.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError, OPDError
from . import formats
from .lora import base_of
from .reader import Reader

_STEP_DIR = re.compile(r"^(?:checkpoint|global_step|step|iter|ckpt)[-_]?(\d+)$")


@dataclass
class Run:
    """A named, ordered set of checkpoints of one training job plus its base W₀ (step 0)."""

    name: str
    root: Path
    base: Reader
    steps: dict[int, Reader] = field(default_factory=dict)
    #: the :func:`open_run` arguments that re-open this run elsewhere (a worker process or node): absolute paths,
    #: the steps found here; ``None`` for a run assembled by hand (such a run is analysed in this process only)
    source: dict | None = field(default=None, repr=False, compare=False)

    @property
    def final_step(self) -> int:
        return max(self.steps)

    def __repr__(self) -> str:
        return f"Run({self.name!r}, steps={sorted(self.steps)}, base={str(self.base.path)!r})"


#: sub-directories a run root may hold its step directories in (OpenRLHF's DeepSpeed actor)
_NESTED_ROOTS = ("_actor",)


def _weights_dir(d: Path) -> Path | None:
    """The directory under a step directory that holds a checkpoint in a known format (verl nests them)."""
    hit = formats.detect(d)
    return None if hit is None else hit[1]


def _step_root(root: Path) -> Path:
    """``root``, or the sub-directory holding its step directories (``_actor/``) when root holds none."""
    if any(_STEP_DIR.match(c.name) and c.is_dir() for c in root.iterdir()):
        return root
    for sub in _NESTED_ROOTS:
        if (root / sub).is_dir():
            return root / sub
    return root


def _single_step(d: Path) -> int:
    m = _STEP_DIR.match(d.name)
    if m:
        return int(m.group(1))
    state = d / "trainer_state.json"
    if state.exists():
        try:
            return int(json.loads(state.read_text()).get("global_step", 1))
        except (json.JSONDecodeError, ValueError, TypeError):
            pass
    return 1


def find_steps(root: str | Path) -> dict[int, Path]:
    """Map step -> weights directory for every checkpoint under ``root`` (one level of step dirs)."""
    root = Path(root)
    if not root.exists():
        raise OPDError(f"{root}: no such directory", hint="check the path")
    if not root.is_dir():
        raise OPDError(f"{root}: not a directory", hint="point at the run's output directory")
    single = _weights_dir(root)
    if single is not None:
        return {_single_step(root): single}
    root = _step_root(root)
    found: dict[int, Path] = {}
    unreadable: list[Path] = []
    for child in sorted(root.iterdir()):
        m = _STEP_DIR.match(child.name)
        if not (m and child.is_dir()):
            continue
        wd = _weights_dir(child)
        if wd is None:
            unreadable.append(child)
            continue
        step = int(m.group(1))
        if step in found:
            raise OPDError(f"{root}: two checkpoints for step {step} ({found[step]} and {wd})",
                           hint="keep one of them or analyse them as separate runs")
        found[step] = wd
    if not found:
        if unreadable:
            raise CheckpointError(f"{unreadable[0]}: a step directory without weights in a known format "
                                  f"({len(unreadable)} such; formats: {', '.join(formats.names())})",
                                  hint="see docs/layouts.md, or merge the trainer state to HF format "
                                  "(model.safetensors + config.json)")
        what = "is empty" if not any(root.iterdir()) else "holds no checkpoints"
        raise OPDError(f"{root}: {what} (looked for checkpoint-N/, global_step_N/, step_N/, step-N/, iter_N/ "
                       "or model.safetensors)", hint="point at a training output directory")
    for child in unreadable:
        warnings.warn(f"{child}: skipped, no weights in a known format inside", stacklevel=2)
    return found


def powers_of_two_missing(steps) -> list[int]:
    """Powers of two up to the last step that are absent (EffOPD replay needs each 2ⁿ and 2ⁿ⁻¹)."""
    steps = set(steps)
    last = max(steps, default=0)
    out, p = [], 1
    while p <= last:
        if p not in steps:
            out.append(p)
        p *= 2
    return out


def open_run(root: str | Path, *, base: str | Path | None = None, name: str | None = None,
             steps: list[int] | None = None, allow_pickle: bool = False, warn_missing: bool = True,
             lora_scaling: float | None = None) -> Run:
    """Discover a run's checkpoints and its base.

    Args:
        root: the training output directory (or a single checkpoint directory).
        base: directory of the model training started from. Default: the step-0 checkpoint.
        name: label for the ``run`` column (default: the directory name).
        steps: keep only these steps (default: all found, step 0 excluded since it is the base).
        allow_pickle: also read ``pytorch_model.bin`` (with ``weights_only=True``).
        lora_scaling: for LoRA runs, the scaling s in ΔW = s·B·A, overriding adapter_config.json's α/r.
    """
    root = Path(root)
    found = find_steps(root)
    lora = {s: p for s, p in found.items() if formats.detect(p)[0] is formats.peft}  # adapter-only steps
    if lora and len(lora) != len(found):
        raise OPDError(f"{root}: mixes LoRA adapters ({sorted(lora)}) and full checkpoints "
                       f"({sorted(set(found) - set(lora))})", hint="analyse them as separate runs")
    if lora:
        found.pop(0, None)  # a step-0 adapter is the initialisation (B = 0), not W₀
        if not found:
            raise OPDError(f"{root}: only a step-0 adapter, nothing to compare", hint="point at a run with saved steps")
        base = base if base is not None else base_of(next(iter(found.values())))
    if base is not None:
        base_ck = formats.open(Path(base), allow_pickle=allow_pickle)
    elif 0 in found:
        base_ck = formats.open(found[0], allow_pickle=allow_pickle)
    else:
        raise OPDError(f"{root}: no base model W₀ (trainers do not save step 0, and config.json does not name it)",
                       hint="pass --base DIR with the model training started from")
    found.pop(0, None)
    if steps is not None:
        unknown = sorted(set(steps) - set(found))
        if unknown:
            raise OPDError(f"{root}: no checkpoint for step(s) {unknown}; found {sorted(found)}",
                           hint="pick steps from the list")
        found = {s: found[s] for s in steps}
    if not found:
        raise OPDError(f"{root}: only the base checkpoint, nothing to compare", hint="point at a run with saved steps")
    if warn_missing:
        missing = powers_of_two_missing(found)
        if missing and len(found) > 1:
            warnings.warn(f"{root}: steps {missing} are missing (save_total_limit rotation?); "
                          "EffOPD replay needs every power of two", stacklevel=2)
    if base_ck.partial:
        raise OPDError(f"{base_ck.path}: the base is a LoRA adapter", hint="pass --base with the full model")
    options = {"scaling": lora_scaling} if lora else {}
    ckpts = {s: formats.open(p, allow_pickle=allow_pickle, base_config=base_ck.config, base=base_ck, **options)
             for s, p in sorted(found.items())}
    source = {"root": os.path.abspath(root), "base": None if base is None else os.path.abspath(base),
              "name": name or root.name, "steps": sorted(ckpts), "allow_pickle": allow_pickle,
              "lora_scaling": lora_scaling}
    return Run(name or root.name, root, base_ck, ckpts, source)
