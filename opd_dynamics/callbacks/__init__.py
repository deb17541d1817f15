"""In-training callbacks: update geometry and OPD token diagnostics logged beside the loss; the online
early-subspace projection (Geometry of OPD) that confines training to the early update's subspace.

Both are ``transformers.TrainerCallback``s (HF ``Trainer`` and every TRL trainer) and step hooks of the reference
trainer (``opd_dynamics.lab.loop.train(..., step_hooks=[cb])``). They log through the trainer's own ``log``, so the
figures reach whatever ``report_to`` is set up (TensorBoard, Weights & Biases, Trackio), and each logs its own cost.

>>> from opd_dynamics.callbacks import GeometryCallback
>>> cb = GeometryCallback(["spectral_ratio", "effective_rank"], every=50)   # Trainer(..., callbacks=[cb])
"""
from .geometry import GeometryCallback
from .projection import EarlySubspaceProjection, EarlySubspaceProjectionCallback
from .tokens import TokenDiagnosticsCallback

__all__ = ["EarlySubspaceProjection", "EarlySubspaceProjectionCallback", "GeometryCallback", "TokenDiagnosticsCallback"]
