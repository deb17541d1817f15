"""NeMo-RL policy weights: ``step_N/policy/weights/model/shard-0000R-model-00001-of-00001.safetensors``.

NeMo-RL (through torch's ``HuggingFaceStorageWriter(path, save_distributed=True)``) writes one safetensors file per
rank, each holding that rank's slice of every tensor (dim 0 under FSDP), and records in the header's
``__metadata__["DCP_SHARDING_INFO"]`` each slice's ``saved_offsets`` in the global tensor; ``.hf_metadata/`` beside
the shards holds the HF ``config.json``. File names number the ranks but not how many there were: a missing
middle rank is named here, a missing last rank shows as a shape that differs from the base's (the engine's check). A tensor is rebuilt by reading each slice's byte range (plain ``pread``,
no mmap, no pickle) into its place; the global shape is where the slices end, and slices that do not tile it are
an error. Values keep their stored dtype.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ..reader import read_config
from ..safetensors_file import SafetensorsFile

FORMAT = "nemo-rl"
SHARDING_KEY = "DCP_SHARDING_INFO"
_SHARD = re.compile(r"^shard-(\d+)-model-\d+-of-\d+\.safetensors$")
_SUBDIRS = ("", "policy/weights/model", "policy/weights", "weights/model", "model")


def detect(step_dir: Path) -> Path | None:
    for sub in _SUBDIRS:
        cand = step_dir / sub if sub else step_dir
        if cand.is_dir() and any(_SHARD.match(p.name) for p in cand.iterdir()):
            return cand
    return None


def open(path: Path, *, allow_pickle: bool = False, base_config: dict | None = None) -> NemoRLCheckpoint:
    return NemoRLCheckpoint(path, base_config=base_config)


class NemoRLCheckpoint:
    """The per-rank safetensors slices of one NeMo-RL policy checkpoint behind the Reader verbs."""

    partial = False
    format = FORMAT

    def __init__(self, path: str | Path, *, base_config: dict | None = None):
        self.path = Path(path)
        self.reads = 0
        self.bytes_read = 0
        self._base_config = dict(base_config or {})
        files = sorted(p for p in self.path.iterdir() if _SHARD.match(p.name))
        if not files:
            raise CheckpointError(f"{self.path}: no shard-*-model-*.safetensors files", hint="point at policy/weights/model/")
        ranks = sorted(int(_SHARD.match(f.name).group(1)) for f in files)
        missing = sorted(set(range(1, ranks[-1] + 1)) - set(ranks))
        if missing:
            raise CheckpointError(f"{self.path}: missing shard file shard-{missing[0]:05d}-model-… "
                                  f"({len(files)} of {ranks[-1]} ranks present)", hint="copy every rank's shard file")
        # name -> [(file, offsets)]
        self._pieces: dict[str, list[tuple[SafetensorsFile, tuple[int, ...]]]] = {}
        for f in files:
            st = SafetensorsFile(f)
            info = _sharding_info(st)
            for name in st.keys():
                offsets = info.get(name, {}).get("saved_offsets", [0] * len(st.shape(name)))
                if len(offsets) != len(st.shape(name)):
                    raise CheckpointError(f"{f}: {name!r} has offsets {offsets} for a {len(st.shape(name))}-D slice",
                                          hint="re-save the checkpoint")
                self._pieces.setdefault(name, []).append((st, tuple(int(o) for o in offsets)))
        self._shapes = {n: self._global_shape(n, ps) for n, ps in self._pieces.items()}

    # -- the verbs ------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self._pieces)

    def __contains__(self, name: str) -> bool:
        return name in self._pieces

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[self._check(name)]

    def dtype(self, name: str) -> torch.dtype:
        st, _ = self._pieces[self._check(name)][0]
        return st.dtype(name)

    def file_of(self, name: str) -> Path:
        return self._pieces[self._check(name)][0][0].path

    def metadata(self) -> dict[str, str]:
        return {"shards": str(len({st.path for ps in self._pieces.values() for st, _ in ps}))}

    @property
    def config(self) -> dict[str, Any]:
        for p in (self.path / ".hf_metadata" / "config.json", self.path / "config.json",
                  self.path.parent / ".hf_metadata" / "config.json"):
            cfg = read_config(p)
            if cfg:
                return cfg
        return dict(self._base_config)

    def get_tensor(self, name: str) -> torch.Tensor:
        """The whole tensor in its stored dtype: each rank's slice read and copied to its offsets."""
        out = torch.empty(self.shape(name), dtype=self.dtype(name))
        for st, offsets in self._pieces[name]:
            piece = st.get_tensor(name)
            out[tuple(slice(o, o + n) for o, n in zip(offsets, piece.shape))].copy_(piece)
            self.bytes_read += piece.numel() * piece.element_size()
        self.reads += 1
        return out

    def __repr__(self) -> str:
        return f"NemoRLCheckpoint({str(self.path)!r}, tensors={len(self._pieces)})"

    # -- internals --------------------------------------------------------------------------------
    def _check(self, name: str) -> str:
        if name not in self._pieces:
            raise CheckpointError(f"{self.path}: no tensor {name!r}", hint="check --select or the model family")
        return name

    def _global_shape(self, name: str, pieces) -> tuple[int, ...]:
        ends = [tuple(o + n for o, n in zip(off, st.shape(name))) for st, off in pieces]
        shape = tuple(max(e[d] for e in ends) for d in range(len(ends[0])))
        dtypes = {st.dtype(name) for st, _ in pieces}
        covered = sum(math.prod(st.shape(name)) for st, _ in pieces)
        if covered != math.prod(shape) or len(dtypes) != 1:
            what = f"dtypes {sorted(map(str, dtypes))}" if len(dtypes) != 1 else \
                f"{covered} of {math.prod(shape)} elements"
            raise CheckpointError(f"{self.path}: the slices of {name!r} do not tile its shape {list(shape)} ({what})",
                                  hint="copy every rank's shard file of this step")
        return shape


def _sharding_info(st: SafetensorsFile) -> dict:
    raw = st.metadata().get(SHARDING_KEY)
    if raw is None:
        return {}
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{st.path}: {SHARDING_KEY} in the header is not valid JSON", hint="re-save the checkpoint") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{st.path}: {SHARDING_KEY} is not a mapping", hint="re-save the checkpoint")
    return info
