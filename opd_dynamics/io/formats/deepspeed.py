"""DeepSpeed ZeRO-1/2/3 checkpoints, read in place one parameter at a time (OpenRLHF, HF Trainer + DeepSpeed).

Layouts: OpenRLHF ``ckpt/_actor/global_stepN/``, HF Trainer ``checkpoint-N/global_stepN/``; a ``latest`` file
beside the tags names the newest one, and DeepSpeed copies ``zero_to_fp32.py`` there too.

What is read (``weights="fp32"``, the default): the fp32 master weights the optimizer holds — the training state
itself; the 16-bit ``module`` copy loses every update below half a bf16 step (2⁻⁹–2⁻⁸ of the weight), i.e.
most of a small RL step.

- ZeRO-1/2: each rank's ``[bf16_]zero_pp_rank_R_mp_rank_00_optim_states.pt`` holds
  ``single_partition_of_fp32_groups[g]``, rank R's slice of parameter group g flattened in ``param_shapes`` order
  (plus ``param_alignment_paddings``); concatenating the W slices gives the group, a parameter is one range of it.
- ZeRO-3: each rank's ``fp32_flat_groups`` holds, for every parameter in ``param_shapes`` order, its own
  ⌈numel/W⌉ elements (the last rank zero-padded); a parameter is the W pieces concatenated, cut to numel.

``weights="module"`` reads the 16-bit ``module`` of ZeRO-1/2's ``mp_rank_00_model_states.pt`` instead (ZeRO-3 keeps
only placeholders there; then the ``model.safetensors`` HF Trainer saved beside the tag is read, if any).
Names are the model's HF names (wrapper prefixes such as ``module.`` or OpenRLHF's ``model.`` stripped); tied
aliases (``shared_params``) are not listed, as ``save_pretrained`` drops them too. Files are memory-mapped
(``torch.load(mmap=True, weights_only=True)``, DeepSpeed's own classes stood in by name: :mod:`.deepspeed_pickle`),
so reading one parameter touches only its bytes; DeepSpeed need not be installed. The exact reference is
DeepSpeed's ``zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint``, which the tests compare against bit for bit.
"""
from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError, OPDError
from .deepspeed_pickle import safe_load

FORMAT = "deepspeed"
OPTIONS = ("ds_weights",)  # what the registry passes on from analyze(ds_weights=) / --ds-weights
WEIGHTS = ("fp32", "module")
_RANK = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_(optim|model)_states\.pt$")
_MP = re.compile(r"^mp_rank_(\d+)_model_states\.pt$")
_TAG = re.compile(r"^global_step(\d+)$")
_STEP_NAME = re.compile(r"^(?:checkpoint|global_step|step|iter|ckpt)[-_]?\d+$")  # discovery's step directories
_WRAPPERS = ("module.", "_orig_mod.", "_forward_module.")
_HF_HEADS = {"model", "lm_head", "transformer", "gpt_neox", "score"}
#: bytes copied out of the memory-mapped rank files before the maps are dropped: pages read through a map count in
#: RSS until it is unmapped, so without this a reader that read every tensor would hold the whole checkpoint
_KEEP_MAPPED = 64 * 2**20


def _ds_files(d: Path) -> bool:
    try:
        return any(_RANK.match(f.name) or _MP.match(f.name) for f in d.iterdir())
    except OSError:
        return False


def _latest(d: Path) -> str | None:
    p = d / "latest"
    if not p.is_file():
        return None
    st = p.stat()
    return p.read_text().strip() if getattr(st, "st_size", getattr(st, "size", 0)) < 1024 else None


def detect(step_dir: Path) -> Path | None:
    """The tag directory holding DeepSpeed rank files: ``step_dir`` itself, or inside a step directory
    (``checkpoint-N/``) the tag ``latest`` names, else its newest ``global_stepN/``. A ``latest`` naming a missing tag
    answers ``step_dir`` so that :func:`open` says so. A save root such as OpenRLHF's ``_actor/`` is not a step:
    its tags are (None here; discovery walks them). Works on remote paths too (file names only)."""
    step_dir = Path(step_dir) if isinstance(step_dir, str) else step_dir
    if _ds_files(step_dir):
        return step_dir
    if not _STEP_NAME.match(step_dir.name):
        return None
    tag = _latest(step_dir)
    if tag is not None:
        if _ds_files(step_dir / tag):
            return step_dir / tag
        if (step_dir / "zero_to_fp32.py").exists():
            return step_dir
    tags = [c for c in step_dir.glob("global_step*") if _TAG.match(c.name) and c.is_dir() and _ds_files(c)]
    return max(tags, key=lambda c: int(_TAG.match(c.name).group(1))) if tags else None


def check_weights(ds_weights: str) -> str:
    if ds_weights not in WEIGHTS:
        raise OPDError(f"unknown DeepSpeed weights {ds_weights!r}", hint=f"use one of {', '.join(WEIGHTS)} "
                       "(--ds-weights)")
    return ds_weights


def open(path: Path, *, allow_pickle: bool = False, base_config: dict | None = None, ds_weights: str = "fp32"):
    """A reader for the DeepSpeed checkpoint at ``path`` (a tag directory, or a directory whose ``latest`` names one).

    ``ds_weights``: ``"fp32"`` (the optimizer's master weights, default) or ``"module"`` (the 16-bit model copy).
    ``allow_pickle`` changes nothing here: only DeepSpeed's own record classes are ever unpickled.
    """
    weights = check_weights(ds_weights)
    tag_dir = _tag_dir(Path(path))
    if weights == "module" and any(_RANK.match(f.name) and f.name.endswith("_model_states.pt") for f in tag_dir.iterdir()):
        beside = tag_dir.parent
        if (beside / "model.safetensors").exists() or (beside / "model.safetensors.index.json").exists():
            from ..checkpoint import Checkpoint
            return Checkpoint(beside, base_config=base_config)
        raise CheckpointError(f"{tag_dir}: a ZeRO-3 checkpoint keeps no 16-bit module copy "
                              "(and no model.safetensors beside it)", hint="read the fp32 weights (the default)")
    return DeepSpeedCheckpoint(tag_dir, weights=weights, base_config=base_config)


def _tag_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such directory", hint="check the path")
    if _ds_files(path):
        return path
    tag = _latest(path)
    if tag is None:
        hit = detect(path)
        if hit is None:
            raise CheckpointError(f"{path}: no DeepSpeed rank files (*_model_states.pt)",
                                  hint="point at a global_stepN/ directory saved by engine.save_checkpoint")
        return hit
    if not _ds_files(path / tag):
        raise CheckpointError(f"{path / 'latest'}: names tag {tag!r}, but {path / tag} holds no DeepSpeed checkpoint",
                              hint="write the existing tag (e.g. global_stepN) into 'latest', or restore the tag "
                              "directory")
    return path / tag


def _hf_prefix(names: list[str]) -> str:
    """The wrapper prefix to strip so that names are the HF model's (``module.``; OpenRLHF's ``model.``)."""
    prefix = ""
    while names:
        rest = [n[len(prefix):] for n in names]
        wrap = next((w for w in _WRAPPERS if all(n.startswith(w) for n in rest)), None)
        if wrap is None and all(n.startswith("model.") for n in rest) and \
                any(n.split(".")[1] in _HF_HEADS for n in rest if n.count(".") > 1):
            wrap = "model."  # OpenRLHF's Actor keeps the HF model as .model: model.model.layers…, model.lm_head…
        if wrap is None:
            return prefix
        prefix += wrap
    return prefix


class DeepSpeedCheckpoint:
    """Lazy view of one DeepSpeed tag directory (``global_stepN/``): fp32 masters or the 16-bit module."""

    partial = False

    def __init__(self, path: str | Path, *, weights: str = "fp32", base_config: dict | None = None):
        self.path = Path(path)
        self.weights = weights
        self._base_config = base_config
        self.reads = 0
        files = sorted(f.name for f in self.path.iterdir())
        optim, model3, mp = {}, {}, []
        for name in files:
            m = _RANK.match(name)
            if m:
                if int(m.group(2)) != 0:
                    raise CheckpointError(f"{self.path / name}: a tensor- or pipeline-parallel DeepSpeed checkpoint "
                                          f"(mp_rank_{m.group(2)})", hint="only data-parallel ZeRO (mp_rank_00) "
                                          "is read; merge it with DeepSpeed's ds_to_universal.py first")
                (optim if m.group(3) == "optim" else model3)[int(m.group(1))] = self.path / name
            elif _MP.match(name):
                mp.append(name)
        if any(n != "mp_rank_00_model_states.pt" for n in mp):
            bad = next(n for n in mp if n != "mp_rank_00_model_states.pt")
            raise CheckpointError(f"{self.path / bad}: a tensor-parallel DeepSpeed checkpoint",
                                  hint="only data-parallel ZeRO (mp_rank_00) is read")
        self.stage3 = bool(model3)
        meta_file = model3.get(0) if self.stage3 else self.path / "mp_rank_00_model_states.pt"
        if meta_file is None or not meta_file.exists():
            want = "zero_pp_rank_0_mp_rank_00_model_states.pt" if self.stage3 else "mp_rank_00_model_states.pt"
            raise CheckpointError(f"{self.path / want}: missing DeepSpeed model-states file",
                                  hint="copy the missing file from the training machine")
        self._meta_file = meta_file
        self._maps: dict[tuple, Any] = {}  # memory-mapped files in use: ("meta",), ("optim", R), ("model", R)
        self._mapped = 0                   # bytes copied out of them since they were mapped
        meta = self._map(("meta",))
        if not isinstance(meta, dict) or "param_shapes" not in meta or "module" not in meta:
            raise CheckpointError(f"{meta_file}: not a DeepSpeed model-states file (no param_shapes)",
                                  hint="point at a directory written by engine.save_checkpoint")
        self.world_size = int(meta.get("dp_world_size") or max(optim, default=0) + 1)
        self._check_ranks(optim, "optim", meta_file, required=weights == "fp32")
        if self.stage3:
            self._check_ranks(model3, "model", meta_file, required=True)
        self._optim_files = optim
        self._model3_files = model3
        module = meta["module"]
        self._meta = {"ds_version": str(meta.get("ds_version", "")), "global_steps": str(meta.get("global_steps", ""))}
        shared = set(meta.get("shared_params") or {})
        param_shapes: list[dict[str, Any]] = list(meta["param_shapes"])
        frozen = dict(meta.get("frozen_param_shapes") or {})
        buffers = [b for b in meta.get("buffer_names") or [] if b in module]
        self._entries: dict[str, tuple] = {}   # HF name -> how to read it
        if weights == "module":
            for k in module:
                if k not in shared:
                    self._entries[k] = ("module", k, tuple(module[k].shape), module[k].dtype)
        else:
            self._plan_fp32(param_shapes, frozen, buffers, meta)
        order = {k: i for i, k in enumerate(module)}  # the model's own order, as save_pretrained writes it
        prefix = _hf_prefix(list(self._entries))
        self._entries = {k[len(prefix):]: self._entries[k]
                         for k in sorted(self._entries, key=lambda k: order.get(k, len(order)))}
        zero = (meta.get("ds_config") or {}).get("zero_optimization") or {}
        self.stage = self._stage if weights == "fp32" else int(zero.get("stage", 3 if self.stage3 else 2))
        self.format = f"deepspeed-zero{self.stage}" + ("-module" if weights == "module" else "")

    # -- planning where each parameter lives --------------------------------------------------------------------
    def _check_ranks(self, ranks: dict[int, Path], kind: str, meta_file: Path, *, required: bool) -> None:
        if not ranks and not required:
            return
        if not ranks:
            raise CheckpointError(f"{self.path}: no *_optim_states.pt files (the fp32 master weights)",
                                  hint="copy the optimizer files, or read the 16-bit copy with "
                                  "--ds-weights module (weights='module')")
        pre = ranks[min(ranks)].name.split("zero_pp_rank_")[0]
        missing = [r for r in range(self.world_size) if r not in ranks]
        if missing:
            name = f"{pre}zero_pp_rank_{missing[0]}_mp_rank_00_{kind}_states.pt"
            raise CheckpointError(f"{self.path / name}: missing rank file ({len(missing)} of {self.world_size} "
                                  f"ranks missing)", hint="copy every rank's file from the training machine")
        if len(ranks) != self.world_size:
            raise CheckpointError(f"{self.path}: {len(ranks)} {kind}-state rank files, but {meta_file.name} says the "
                                  f"world size was {self.world_size}", hint="remove files left over from another "
                                  "run (a different world size) or re-copy the checkpoint")

    def _map(self, key: tuple) -> Any:
        """A memory-mapped file's contents, mapped once until :data:`_KEEP_MAPPED` bytes were read through it."""
        if key not in self._maps:
            if key[0] == "meta":
                self._maps[key] = safe_load(self._meta_file)
            elif key[0] == "model":
                self._maps[key] = safe_load(self._model3_files[key[1]])
            else:
                self._maps[key] = self._optim_groups(key[1])
        return self._maps[key]

    def _optim(self, rank: int) -> dict[str, Any]:
        sd = safe_load(self._optim_files[rank])
        osd = sd.get("optimizer_state_dict") if isinstance(sd, dict) else None
        if not isinstance(osd, dict) or "zero_stage" not in osd:
            raise CheckpointError(f"{self._optim_files[rank]}: not a ZeRO optimizer file (no zero_stage)",
                                  hint="point at a directory written by a ZeRO engine's save_checkpoint")
        return osd

    def _plan_fp32(self, param_shapes, frozen, buffers, meta) -> None:
        osd = self._optim(0)
        self._stage = int(osd["zero_stage"])
        count = osd.get("partition_count")
        count = max(count) if isinstance(count, list) else count
        if count is not None and int(count) != self.world_size:
            raise CheckpointError(f"{self._optim_files[0]}: partitioned over {count} ranks, but the model states and "
                                  f"{len(self._optim_files)} optimizer files say {self.world_size}",
                                  hint="re-copy the checkpoint; files from runs with different world sizes are mixed")
        key = "fp32_flat_groups" if self._stage == 3 else "single_partition_of_fp32_groups"
        if (self._stage == 3) != self.stage3 or key not in osd:
            raise CheckpointError(f"{self._optim_files[0]}: ZeRO stage {self._stage} optimizer but "
                                  f"{'ZeRO-3' if self.stage3 else 'ZeRO-1/2'} model-states files",
                                  hint="the tag directory mixes two checkpoints; re-copy it")
        self._key = key
        self._sizes = sizes = [g.numel() for g in osd[key]]  # each rank's group sizes (checked equal on reading)
        self._fp32_dtype = osd[key][0].dtype
        W = self.world_size
        module = meta["module"]
        for name in buffers:
            self._entries[name] = ("module", name, tuple(module[name].shape), module[name].dtype)
        if self._stage == 3:
            for name, shape in frozen.items():
                self._entries[name] = ("frozen3", name, tuple(shape), None)
            offset = 0
            bounds = [0, *itertools.accumulate(sizes)]
            for shapes in param_shapes:
                for name, shape in shapes.items():
                    piece = math.ceil(math.prod(shape) / W)
                    self._entries[name] = ("zero3", offset, piece, tuple(shape), bounds)
                    offset += piece
            if offset != bounds[-1]:
                raise CheckpointError(f"{self._optim_files[0]}: fp32_flat_groups hold {bounds[-1]} elements per rank, "
                                      f"param_shapes need {offset}", hint="the model and optimizer files disagree; "
                                      "re-copy the checkpoint")
            return
        fragments = meta.get("frozen_param_fragments") or {}
        for name in frozen:  # ZeRO-2 keeps a frozen parameter whole (in its 16-bit dtype) in the model states
            src = fragments.get(name, module.get(name))
            if src is not None:
                self._entries[name] = ("frozen2", name, tuple(frozen[name]), src.dtype)
        paddings = osd.get("param_alignment_paddings")
        if len(param_shapes) != len(sizes):
            raise CheckpointError(f"{self._optim_files[0]}: {len(sizes)} fp32 groups but {len(param_shapes)} "
                                  "groups in param_shapes", hint="re-copy the checkpoint")
        for g, shapes in enumerate(param_shapes):
            offset = 0
            for i, (name, shape) in enumerate(shapes.items()):
                numel = math.prod(shape)
                self._entries[name] = ("zero2", g, offset, numel, tuple(shape))
                offset += numel + (paddings[g][i] if paddings else 0)
            align = 2 * W
            if math.ceil(offset / align) * align != math.ceil(sizes[g] * W / align) * align:
                raise CheckpointError(f"{self._optim_files[0]}: fp32 group {g} holds {sizes[g] * W} elements, "
                                      f"param_shapes need {offset}", hint="re-copy the checkpoint")

    def _optim_groups(self, rank: int) -> list[torch.Tensor]:
        groups = [g.detach() for g in self._optim(rank)[self._key]]  # saved as leaves needing grad
        if [g.numel() for g in groups] != self._sizes:
            raise CheckpointError(f"{self._optim_files[rank]}: partition sizes differ from rank 0's",
                                  hint="files from two checkpoints are mixed; re-copy the tag directory")
        return groups

    # -- the verbs ----------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def _entry(self, name: str) -> tuple:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r}", hint="check --select or the model family") from None

    def shape(self, name: str) -> tuple[int, ...]:
        e = self._entry(name)
        return e[4] if e[0] == "zero2" else e[3] if e[0] == "zero3" else e[2]

    def dtype(self, name: str) -> torch.dtype:
        e = self._entry(name)
        if e[0] in ("zero2", "zero3"):
            return self._fp32_dtype
        if e[0] == "frozen3":
            return self._map(("model", 0))["frozen_param_fragments"][e[1]].dtype
        return e[3]

    def file_of(self, name: str) -> Path:
        e = self._entry(name)
        if e[0] == "zero2":
            return self._optim_files[min(e[2] // max(self._sizes[e[1]], 1), self.world_size - 1)]
        if e[0] == "zero3":
            return self._optim_files[0]
        return self._model3_files[0] if e[0] == "frozen3" else self._meta_file

    def get_tensor(self, name: str) -> torch.Tensor:
        """The whole tensor in fresh CPU memory (fp32 masters stay fp32); reads only its own bytes."""
        e = self._entry(name)
        self.reads += 1
        out = self._read(e).detach()
        self._mapped += out.nbytes
        if self._mapped > _KEEP_MAPPED:  # unmap: the pages read so far leave RSS (re-mapping costs ~ms per file)
            self._maps.clear()
            self._mapped = 0
        return out

    def _read(self, e: tuple) -> torch.Tensor:
        kind = e[0]
        if kind == "module":
            return self._map(("meta",))["module"][e[1]].clone()
        if kind == "frozen2":
            meta = self._map(("meta",))
            src = (meta.get("frozen_param_fragments") or {}).get(e[1], meta["module"].get(e[1]))
            return src.reshape(e[2]).clone()
        if kind == "frozen3":
            shape = e[2]
            pieces = [self._map(("model", r))["frozen_param_fragments"][e[1]].detach().reshape(-1)
                      for r in range(self.world_size)]
            return torch.cat(pieces)[:math.prod(shape)].view(shape).clone()
        if kind == "zero2":
            _, g, offset, numel, shape = e
            out = torch.empty(numel, dtype=self._fp32_dtype)
            size, done = self._sizes[g], 0
            for rank in range(offset // size, min((offset + numel - 1) // size, self.world_size - 1) + 1):
                part = self._map(("optim", rank))[g]  # only the ranks whose slice holds a piece of it
                lo, hi = max(offset - rank * size, 0), min(offset + numel - rank * size, size)
                if hi > lo:
                    out[done:done + hi - lo] = part[lo:hi]
                    done += hi - lo
            return out.view(shape)
        _, offset, piece, shape, bounds = e
        numel = math.prod(shape)
        out = torch.empty(numel, dtype=self._fp32_dtype)
        for rank in range(self.world_size):
            groups, at = self._map(("optim", rank)), rank * piece
            for g, flat in enumerate(groups):  # a piece may straddle two groups; the last rank's ends in padding
                lo, hi = max(offset, bounds[g]), min(offset + piece, bounds[g + 1])
                n = min(hi - lo, numel - at)
                if n > 0:
                    out[at:at + n] = flat[lo - bounds[g]:lo - bounds[g] + n]
                    at += n
        return out.view(shape)

    @property
    def config(self) -> dict[str, Any]:
        """``config.json`` of the tag directory or the directory above it (HF Trainer), else the base's."""
        for p in (self.path / "config.json", self.path.parent / "config.json"):
            if p.exists():
                try:
                    return json.loads(p.read_text())
                except json.JSONDecodeError:
                    raise CheckpointError(f"{p}: not valid JSON", hint="re-save the model config") from None
        return dict(self._base_config or {})

    def identity(self) -> str:
        """Name, size and mtime of every file read, and which weights (a cached result of one is not the other's)."""
        from ..identity import files_identity

        files = [*self._optim_files.values(), *self._model3_files.values(), self._meta_file]
        return files_identity(files if self.weights == "fp32" else [self._meta_file]) + f":{self.weights}"

    def metadata(self) -> dict[str, str]:
        return {"format": self.format, "zero_stage": str(self.stage), "world_size": str(self.world_size),
                "weights": self.weights, "tag": self.path.name, **self._meta}

    def __repr__(self) -> str:
        return f"DeepSpeedCheckpoint({str(self.path)!r}, format={self.format!r}, tensors={len(self._entries)})"

