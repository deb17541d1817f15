"""Load DeepSpeed's checkpoint pickles with ``weights_only=True`` plus exactly the classes they need.

DeepSpeed's optimizer files (``*_optim_states.pt``) pickle a few of its own small classes next to the tensors: the
loss scaler, the ZeRO stage enum and the ``fragment_address`` records of ``param_slice_mappings``. They carry no
weights, so each is replaced by a stand-in *by name* — DeepSpeed need not be installed, nothing of it is imported and
no code from the checkpoint runs. Any other class is refused with its name; ``--allow-pickle`` does not widen this.

>>> import io, torch
>>> buf = io.BytesIO(); torch.save({"w": torch.ones(2)}, buf); _ = buf.seek(0)
>>> sorted(safe_load(buf, "x.pt"))
['w']
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...errors import CheckpointError
from .. import weights_only


class _Record:
    """Stand-in for a DeepSpeed object: keeps the pickled attributes, runs nothing."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({vars(self)})"


class LossScaler(_Record): ...


class DynamicLossScaler(_Record): ...


class fragment_address(_Record):  # noqa: N801 (DeepSpeed's name); fields numel, start
    ...


class ZeroStageEnum(int):
    """Stand-in for DeepSpeed's ``ZeroStageEnum(int, Enum)``: pickled as ``ZeroStageEnum(stage)``."""


#: full DeepSpeed class path -> stand-in; the whole allowlist beyond torch's own weights-only set
ALLOWED: dict[str, type] = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler": LossScaler,
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler": DynamicLossScaler,
    "deepspeed.runtime.zero.config.ZeroStageEnum": ZeroStageEnum,
    "deepspeed.utils.tensor_fragment.fragment_address": fragment_address,
}

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def safe_load(path: str | Path | Any, label: str | Path | None = None) -> Any:
    """``torch.load(path, map_location="cpu", mmap=True, weights_only=True)`` with :data:`ALLOWED` stand-ins.

    Tensors stay memory-mapped (nothing is read until used); a pickle needing any other class is a one-line
    :class:`CheckpointError` naming it.
    """
    label = label or path
    mmap = isinstance(path, (str, Path))
    try:
        return weights_only.load(path, allow=[(cls, name) for name, cls in ALLOWED.items()], mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{label}: no such file", hint="copy the missing file") from None
    except Exception as e:  # the weights-only unpickler refused something: say what, in one line
        text = str(e)
        m = _GLOBAL.search(text)
        if m:
            raise CheckpointError(f"{label}: the pickle needs class {m.group(1)}, which is not allowed "
                                  "(only tensors and DeepSpeed's loss scaler, ZeRO stage and fragment records are "
                                  "unpickled; --allow-pickle does not change this)",
                                  hint="re-save the checkpoint without that object, or convert it to safetensors "
                                  "in a trusted environment") from None
        first = text.strip().splitlines()[0][:160] if text.strip() else type(e).__name__
        raise CheckpointError(f"{label}: cannot load ({type(e).__name__}: {first})",
                              hint="the file is truncated or not a torch checkpoint; re-copy it") from None
