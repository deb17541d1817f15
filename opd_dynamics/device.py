"""Which torch device a computation runs on: ``--device auto|cpu|cuda[:N]`` resolved once, the same way for the
analysis (:mod:`opd_dynamics.analyze`) and the intervention engine (:mod:`opd_dynamics.interventions`).

torch is imported inside the function, so importing this module (and ``analyze``) stays cheap.

>>> str(resolve_device("cpu"))
'cpu'
"""
from __future__ import annotations

from .errors import OPDError


def resolve_device(device: str):
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA is a clear error. Returns a ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise OPDError(f"--device {device}: no CUDA device here", hint="use --device cpu or auto")
    return torch.device(device)
