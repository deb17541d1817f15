"""Find the checkpoints of a training run in the layouts trainers really write, and its base W₀.

Layouts (step N parsed from the directory name):

- HF Trainer / TRL: ``run/checkpoint-N/`` (with DeepSpeed: ``checkpoint-N/global_stepN/``)
- verl: ``run/global_step_N/actor/huggingface/`` (HF export) or ``run/global_step_N/actor/`` (FSDP rank shards)
- torchtitan ``run/step-N/`` (``run/checkpoint/step-N/`` entered), accelerate FSDP
  ``run/checkpoint-N/pytorch_model_fsdp_0/``, NeMo-RL ``run/step_N/policy/weights/``, plain ``run/stepN/``
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
from typing import Iterable

from ..errors import CheckpointError, OPDError
from . import formats, hub
from .lora import base_of
from .reader import Reader
from .storage import StorageConfig, as_path

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


#: sub-directories a run root may hold its step directories in (OpenRLHF's DeepSpeed actor, torchtitan's
#: ``checkpoint.folder``)
_NESTED_ROOTS = ("_actor", "checkpoint")


def weights_dir(d: Path) -> Path | None:
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
    m = _STEP_DIR.match(d.name.rpartition("@")[2])  # hf://org/repo@step-100: the revision names the step
    if m:
        return int(m.group(1))
    state = d / "trainer_state.json"
    if state.exists():
        try:
            return int(json.loads(state.read_text()).get("global_step", 1))
        except (OSError, ValueError, TypeError, AttributeError):  # unreadable state: fall back to step 1
            pass
    return 1


def _unreadable(d: Path) -> CheckpointError | None:
    """Why a step directory that exists cannot be read (a dangling link, no permission), else None.

    Why an error and not a skip: a step that silently drops out moves the "final" step, and every metric measured
    against the final update (``alignment_to_final``) would be measured against the wrong one.
    """
    if not isinstance(d, Path):  # remote storage: no links, no local permissions
        return None
    if d.is_symlink() and not d.exists():
        return CheckpointError(f"{d}: a dangling symlink (its target {os.readlink(d)} does not exist: "
                               "an unmounted volume?)", hint=f"mount or restore it, or leave step {_step_of(d)} "
                               "out with --steps")
    if d.is_dir() and not os.access(d, os.R_OK | os.X_OK):
        return CheckpointError(f"{d}: permission denied", hint=f"get read access, or leave step {_step_of(d)} "
                               "out with --steps")
    return None


def _step_of(d: Path) -> int:
    return int(_STEP_DIR.match(d.name).group(1))


def _listdir(root) -> list:
    try:
        return sorted(root.iterdir())
    except OSError as e:
        raise OPDError(f"{root}: cannot list ({e.strerror})", hint="check the path and its permissions") from None


def find_steps(root: str | Path, storage: StorageConfig | None = None,
               steps: Iterable[int] | None = None) -> dict[int, Path]:
    """Map step -> weights directory for every checkpoint under ``root`` (one level of step dirs).

    ``root`` may be a URL (``s3://bucket/run/``): the same layouts are found in the remote listing, and
    ``hf://org/repo@step-*`` (or ``@a,b``) is a run whose checkpoints are the matching revisions.
    A step directory that exists but cannot be read (dangling link, permission denied) is an error, unless
    ``steps`` is given and leaves it out.
    """
    root = as_path(root, storage)
    if hub.is_revision_set(root):
        found = {}
        for step, rev in hub.revisions(root).items():
            wd = weights_dir(rev)
            if wd is None:
                raise CheckpointError(f"{rev}: a revision without HF weights", hint="check the revision list")
            found[step] = wd
        return found
    if not root.exists():
        raise OPDError(f"{root}: no such directory", hint="check the path")
    if not root.is_dir():
        raise OPDError(f"{root}: not a directory", hint="point at the run's output directory")
    single = weights_dir(root)
    if single is not None:
        return {_single_step(root): single}
    root = _step_root(root)
    wanted = None if steps is None else set(steps) | {0}
    found: dict[int, Path] = {}
    unreadable: list[Path] = []
    for child in _listdir(root):
        m = _STEP_DIR.match(child.name)
        if not m:
            continue
        broken = _unreadable(child)
        if broken is not None:
            if wanted is None or int(m.group(1)) in wanted:
                raise broken
            continue
        if not child.is_dir():
            continue
        try:
            wd = weights_dir(child)
        except PermissionError as e:
            raise CheckpointError(f"{e.filename}: permission denied", hint=f"get read access, or leave step "
                                  f"{m.group(1)} out with --steps") from None
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
             lora_scaling: float | None = None, storage: StorageConfig | None = None,
             ds_weights: str = "fp32") -> Run:
    """Discover a run's checkpoints and its base.

    Args:
        root: the training output directory (or a single checkpoint directory).
        base: directory of the model training started from. Default: the step-0 checkpoint.
        name: label for the ``run`` column (default: the directory name).
        steps: keep only these steps (default: all found, step 0 excluded since it is the base).
        allow_pickle: also read ``pytorch_model.bin`` (with ``weights_only=True``).
        lora_scaling: for LoRA runs, the scaling s in ΔW = s·B·A, overriding adapter_config.json's α/r.
        storage: how URLs (``s3://``, ``hf://``, …) given as ``root`` or ``base`` are reached
            (:class:`~opd_dynamics.io.storage.StorageConfig`).
        ds_weights: for DeepSpeed ZeRO runs, ``"fp32"`` (the optimizer's master weights, default) or ``"module"``
            (the 16-bit model copy, which rounds small updates away).
    """
    formats.deepspeed.check_weights(ds_weights)
    root = as_path(root, storage)
    found = find_steps(root, storage, steps)
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
        base_ck = formats.open(as_path(base, storage), allow_pickle=allow_pickle)
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
    options = {"scaling": lora_scaling, "ds_weights": ds_weights} if lora else {"ds_weights": ds_weights}
    ckpts = {}
    for s, p in sorted(found.items()):
        try:
            ckpts[s] = formats.open(p, allow_pickle=allow_pickle, base_config=base_ck.config, base=base_ck, **options)
        except CheckpointError as e:
            raise CheckpointError(e.message, hint=_step_hint(s, found, e.hint)) from None
    source = {"root": _where(root), "base": None if base is None else _where(as_path(base, storage)),
              "name": name or run_name(root), "steps": sorted(ckpts), "allow_pickle": allow_pickle,
              "lora_scaling": lora_scaling, "storage": storage, "ds_weights": ds_weights}
    return Run(name or run_name(root), root, base_ck, ckpts, source)


def _where(path) -> str:
    """A path as a worker elsewhere re-opens it: absolute for local paths (not resolved: symlinks stay), URLs as is."""
    return os.path.abspath(path) if isinstance(path, Path) else str(path)


def run_name(root) -> str:
    """The default ``run`` label: the directory's name, resolved (``analyze .`` is named after the directory, never
    ''); ``hf://org/repo@step-*`` -> ``repo``."""
    if not isinstance(root, Path):
        return hub.run_name(root)
    resolved = root.resolve()
    return resolved.name or str(resolved)


def _step_hint(step: int, found: dict, hint: str | None) -> str:
    """An unreadable step's hint: the newest one may still be being written (a live run), so offer ``--steps``."""
    others = ",".join(str(s) for s in sorted(found) if s != step)
    if step == max(found) and others:
        return (f"if it is still being written (a live run), analyse the complete steps with --steps {others}"
                + (f"; else {hint}" if hint else ""))
    return (hint + "; " if hint else "") + (f"or leave step {step} out with --steps {others}" if others else "")
