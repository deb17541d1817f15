"""Unpickle FSDP1 ``ShardedTensor`` state dicts without a process group and without arbitrary unpickling.

``ShardedTensor.__setstate__`` refuses to run without an initialised process group, and ``weights_only=True`` does
not allow its classes. This loader is ``torch.load`` with a pickle module whose ``find_class`` answers a fixed
allowlist: torch's tensor rebuild functions, a few plain types, and inert stand-ins for the ShardedTensor classes
that keep only their saved fields (each local shard's tensor and its ``shard_offsets``/``shard_sizes``). Any
other class is refused with its name.
"""
from __future__ import annotations

import collections
import pickle
from types import SimpleNamespace

import torch

_ST = "torch.distributed._shard"
_STUBS = {(f"{_ST}.sharded_tensor.shard", "Shard"), (f"{_ST}.metadata", "ShardMetadata"),
          (f"{_ST}.sharded_tensor.metadata", "ShardedTensorMetadata"),
          (f"{_ST}.sharded_tensor.metadata", "TensorProperties"),
          (f"{_ST}.sharded_tensor.metadata", "MEM_FORMAT_ENCODING"),
          (f"{_ST}.sharding_spec.chunk_sharding_spec", "ChunkShardingSpec"),
          ("torch.distributed.remote_device", "_remote_device")}


class _Stub:
    """Keeps whatever state it is given; has no behaviour."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            for part in state:
                self.__dict__.update(part or {})
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


def _stub_class(name: str) -> type:
    return type(name, (_Stub,), {})


class ShardedTensorStub:
    """What a ShardedTensor's pickle holds: global size, dtype and this rank's local shards."""

    def __init__(self, size, dtype, state):
        self.shape, self.dtype = torch.Size(size), dtype
        self.ndim = len(self.shape)
        self._local_shards = state[0] if isinstance(state, tuple) else []

    def local_shards(self):
        return [SimpleNamespace(tensor=s.tensor, metadata=s.metadata) for s in self._local_shards]


_SHARDED = _stub_class("ShardedTensor")


def _rebuild_wrapper_subclass(cls, dtype, size, *args):
    if cls is not _SHARDED:
        raise pickle.UnpicklingError(f"class {cls.__name__} is not allowed")
    return (dtype, size)


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type is _SHARDED:
        dtype, size = func(*args)
        return ShardedTensorStub(size, dtype, state)
    if new_type is torch.Tensor or new_type is torch.nn.Parameter:
        return func(*args)
    raise pickle.UnpicklingError(f"class {getattr(new_type, '__name__', new_type)} is not allowed")


def _getattr(obj, name: str):
    if isinstance(obj, type) and issubclass(obj, _Stub):  # a nested class or an enum member: inert as well
        return _stub_class(f"{obj.__name__}.{name}")
    raise pickle.UnpicklingError(f"getattr on {type(obj).__name__} is not allowed")


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_wrapper_subclass"): _rebuild_wrapper_subclass,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): torch.Size, ("torch", "device"): torch.device,
    ("torch.serialization", "_get_layout"): torch.serialization._get_layout,
    ("__builtin__", "getattr"): _getattr, ("builtins", "getattr"): _getattr,
    (f"{_ST}.sharded_tensor.api", "ShardedTensor"): _SHARDED,
}
_ALLOWED.update({k: _stub_class(k[1]) for k in _STUBS})


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name} is not allowed")


class _PickleModule:
    Unpickler = _Unpickler
    UnpicklingError = pickle.UnpicklingError
    load = staticmethod(lambda f, **kw: _Unpickler(f, **kw).load())


def load(f, **kwargs) -> dict:
    """``torch.load`` of a state dict holding ShardedTensors (mmap, CPU), with the allowlist above."""
    return torch.load(f, map_location="cpu", mmap=True, weights_only=False, pickle_module=_PickleModule, **kwargs)
