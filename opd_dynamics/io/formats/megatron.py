"""Megatron-core ``torch_dist`` checkpoints (slime, NeMo, verl-Megatron ``dist_ckpt/``) under their HF names.

Layout: ``run/iter_000000N/`` (or ``global_step_N/actor/dist_ckpt/``) with ``metadata.json``
(``{"sharded_backend": "torch_dist", …}``), ``common.pt`` (run arguments; not read), ``.metadata`` and
``__R_I.distcp`` — a DCP checkpoint (:mod:`.dcp_index`), whose ``.metadata`` also pickles Megatron classes,
which are stubbed, never imported. ``latest_checkpointed_iteration.txt`` sits beside the iterations.

Keys are stacked over layers: ``decoder.layers.self_attention.linear_qkv.weight`` has a leading layer axis
[L, …] (MoE experts add an expert axis [L, E, …]); only the chunks of one layer are read. The mapping to HF
names is the table below (Megatron-Bridge / slime's converters use the same), with two fused tensors split
from the base model's config (``num_attention_heads``, ``num_key_value_heads``, ``head_dim`` or
``hidden_size / heads``):

- ``linear_qkv`` [G·(q/G + 2)·d, h]: per query group g, its q/G query heads, then one k head, then one v head;
- ``linear_fc1`` [2f, h]: gate rows then up rows (Megatron saves them so regardless of tensor parallelism).

The attention and MLP norms are saved as ``linear_qkv.layer_norm_weight`` and ``linear_fc1.layer_norm_weight``.
The embedding is cut to the config's ``vocab_size`` (Megatron pads it). ``_extra_state`` and optimizer/RNG
entries are skipped. The stored dtype (fp32 for Megatron's fp32 params) reaches the metrics.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ...errors import CheckpointError
from ..storage import as_path
from .dcp_index import METADATA, DcpIndex

FORMAT = "megatron-torch-dist"
_SUBDIRS = (".", "actor/dist_ckpt", "dist_ckpt")

# Megatron key (after "model.") -> HF name; "{i}" = layer, "{e}" = expert. Values in parentheses are split.
_TOP = {"embedding.word_embeddings.weight": "model.embed_tokens.weight",
        "decoder.final_layernorm.weight": "model.norm.weight",
        "output_layer.weight": "lm_head.weight"}
_LAYER = {  # under decoder.layers. ; the HF name is under model.layers.{i}.
    "self_attention.linear_qkv.weight": ("qkv", "self_attn.{}_proj.weight"),
    "self_attention.linear_qkv.bias": ("qkv", "self_attn.{}_proj.bias"),
    "self_attention.linear_qkv.layer_norm_weight": (None, "input_layernorm.weight"),
    "input_layernorm.weight": (None, "input_layernorm.weight"),
    "self_attention.linear_proj.weight": (None, "self_attn.o_proj.weight"),
    "self_attention.q_layernorm.weight": (None, "self_attn.q_norm.weight"),
    "self_attention.k_layernorm.weight": (None, "self_attn.k_norm.weight"),
    "mlp.linear_fc1.layer_norm_weight": (None, "post_attention_layernorm.weight"),
    "pre_mlp_layernorm.weight": (None, "post_attention_layernorm.weight"),
    "mlp.linear_fc1.weight": ("gate_up", "mlp.{}_proj.weight"),
    "mlp.linear_fc2.weight": (None, "mlp.down_proj.weight"),
    "mlp.router.weight": (None, "mlp.gate.weight"),
    "mlp.experts.experts.linear_fc1.weight": ("gate_up", "mlp.experts.{e}.{}_proj.weight"),
    "mlp.experts.experts.linear_fc2.weight": (None, "mlp.experts.{e}.down_proj.weight"),
    "mlp.shared_experts.linear_fc1.weight": ("gate_up", "mlp.shared_expert.{}_proj.weight"),
    "mlp.shared_experts.linear_fc2.weight": (None, "mlp.shared_expert.down_proj.weight"),
    "mlp.shared_experts.gate_weight": (None, "mlp.shared_expert_gate.weight"),
}
_MIXTRAL = {"mlp.gate.weight": "block_sparse_moe.gate.weight", "mlp.experts.{e}.gate_proj.weight":
            "block_sparse_moe.experts.{e}.w1.weight", "mlp.experts.{e}.up_proj.weight":
            "block_sparse_moe.experts.{e}.w3.weight", "mlp.experts.{e}.down_proj.weight":
            "block_sparse_moe.experts.{e}.w2.weight"}
_SPLITS = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}
_SINGLE_EXPERT = re.compile(r"^mlp\.experts\.experts\.(\d+)\.(.+)$")  # singleton_local_shards layout


def is_megatron(d: Path) -> bool:
    return (d / "metadata.json").is_file() and (d / METADATA).is_file()


def detect(step_dir: Path) -> Path | None:
    """``iter_N/`` itself, or verl-Megatron's ``actor/dist_ckpt/``."""
    step_dir = as_path(step_dir)  # a local Path, or a RemotePath answered from listings
    for sub in _SUBDIRS:
        if is_megatron(step_dir / sub):
            return step_dir / sub if sub != "." else step_dir
    return None


def open(path: Path, *, allow_pickle: bool = False, base_config: dict | None = None) -> "MegatronReader":
    return MegatronReader(path, base_config=base_config)


class MegatronReader:
    """A Megatron ``torch_dist`` checkpoint as HF tensors: one layer's chunks read, fused tensors split."""

    format = FORMAT
    partial = False

    def __init__(self, path: str | Path, *, base_config: dict | None = None):
        self.path = Path(path)
        if not is_megatron(self.path):
            raise CheckpointError(f"{self.path}: not a Megatron torch_dist checkpoint (no metadata.json + .metadata)",
                                  hint="point at an iter_N/ directory")
        cfg = dict(base_config or {})
        for need in ("num_attention_heads", "hidden_size"):
            if need not in cfg:
                raise CheckpointError(f"{self.path}: Megatron checkpoints need the model config to name and split "
                                      f"tensors (no {need!r})", hint="pass --base DIR with the HF model's config.json")
        self._config = cfg
        self.index = DcpIndex(self.path, stub_modules=("megatron.",))
        self._src: dict[str, tuple[str, tuple[int, ...], str | None]] = {}  # HF name -> (key, lead, piece)
        for key, tm in self.index.tensors().items():
            self._map(key, tuple(tm.size))
        if not self._src:
            raise CheckpointError(f"{self.path / METADATA}: no model tensors Megatron names are known for",
                                  hint="only GPT-style decoder checkpoints are read")
        self.reads = 0

    # -- names ------------------------------------------------------------------------------------------
    def _map(self, key: str, size: tuple[int, ...]) -> None:
        rel = key[len("model."):] if key.startswith("model.") else key
        if rel.endswith("_extra_state") or "_extra_state/" in rel:
            return
        if rel in _TOP:
            self._src[_TOP[rel]] = (key, (), None)
            return
        m = re.match(r"^decoder\.layers\.(?:(\d+)\.)?(.+)$", rel)
        if not m:
            return  # optimizer, RNG, MTP and other non-model state
        layer, rest = m.groups()
        expert = None
        e = _SINGLE_EXPERT.match(rest)
        if e:
            expert, rest = int(e.group(1)), "mlp.experts.experts." + e.group(2)
        if rest not in _LAYER:
            return
        split, template = _LAYER[rest]
        layers = [((int(layer),), int(layer))] if layer is not None else [((i,), i) for i in range(size[0])]
        stacked_expert = "{e}" in template and expert is None
        for lead, i in layers:
            for ex in (range(size[len(lead)]) if stacked_expert else [expert]):
                full_lead = lead + ((ex,) if stacked_expert else ())
                for piece in _SPLITS.get(split, (None,)):
                    hf = self._hf_name(template, i, ex, piece)
                    self._src[hf] = (key, full_lead, piece)

    def _hf_name(self, template: str, layer: int, expert: int | None, piece: str | None) -> str:
        name = template.replace("{e}", str(expert)).replace("{}", piece or "")
        if self._config.get("model_type") == "mixtral":
            generic = template.replace("{}", piece or "")
            name = _MIXTRAL.get(generic, generic).replace("{e}", str(expert))
        return f"model.layers.{layer}.{name}"

    # -- shapes and values --------------------------------------------------------------------------
    def _head_split(self) -> tuple[int, int, int]:
        c = self._config
        nq = c["num_attention_heads"]
        ng = c.get("num_key_value_heads") or c.get("num_query_groups") or nq
        return nq, ng, c.get("head_dim") or c["hidden_size"] // nq

    def _piece_rows(self, key: str, piece: str, rows: int) -> slice | torch.Tensor:
        if piece in ("gate", "up"):
            half = rows // 2
            return slice(0, half) if piece == "gate" else slice(half, rows)
        nq, ng, d = self._head_split()
        per = nq // ng + 2
        if rows != ng * per * d:
            raise CheckpointError(f"{self.path}: {key!r} has {rows} rows, config says {ng} query groups × "
                                  f"({nq // ng} q + k + v) × {d}", hint="pass --base with the model's own config.json")
        idx = torch.arange(rows).view(ng, per, d)
        return {"q": idx[:, : per - 2], "k": idx[:, per - 2], "v": idx[:, per - 1]}[piece].reshape(-1)

    def _src_of(self, name: str):
        try:
            return self._src[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: no tensor {name!r}", hint="check --select or the model family") from None

    def keys(self) -> list[str]:
        return list(self._src)

    def shape(self, name: str) -> tuple[int, ...]:
        key, lead, piece = self._src_of(name)
        size = list(self.index.tensors()[key].size)[len(lead):]
        if piece is not None:
            rows = self._piece_rows(key, piece, size[0])
            size[0] = len(range(size[0])[rows]) if isinstance(rows, slice) else len(rows)
        elif name == "model.embed_tokens.weight" or name == "lm_head.weight":
            size[0] = min(size[0], self._config.get("vocab_size", size[0]))
        return tuple(size)

    def dtype(self, name: str) -> torch.dtype:
        return self.index.tensors()[self._src_of(name)[0]].properties.dtype

    def get_tensor(self, name: str) -> torch.Tensor:
        key, lead, piece = self._src_of(name)
        t = self.index.read(key, lead)
        self.reads += 1
        if piece is not None:
            t = t[self._piece_rows(key, piece, t.shape[0])]
        elif name in ("model.embed_tokens.weight", "lm_head.weight"):
            t = t[: self.shape(name)[0]]
        return t.contiguous().clone() if t.untyped_storage().nbytes() != t.nbytes else t

    def file_of(self, name: str) -> Path:
        return self.index.files_of(self._src_of(name)[0])[0]

    def __contains__(self, name: str) -> bool:
        return name in self._src

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT}

    def __repr__(self) -> str:
        return f"MegatronReader({str(self.path)!r}, tensors={len(self._src)})"
