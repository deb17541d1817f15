"""User-facing errors: one line that names the file or tensor and says how to fix it.

The CLI prints ``OPDError`` messages without a traceback and exits non-zero; anything else is a bug
and keeps its traceback.
"""
from __future__ import annotations


class OPDError(Exception):
    """A problem with the user's input (a path, a checkpoint, an option), not with the toolkit.

    >>> str(OPDError("runs/opd/checkpoint-8/model.safetensors: truncated", hint="re-copy the file"))
    'runs/opd/checkpoint-8/model.safetensors: truncated (fix: re-copy the file)'
    """

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(f"{message} (fix: {hint})" if hint else message)

    def __reduce__(self):  # pickled by worker processes and Ray tasks: keep message and hint apart
        return _rebuild, (type(self), self.message, self.hint)


def _rebuild(cls, message, hint):
    return cls(message, hint=hint)


class CheckpointError(OPDError):
    """A checkpoint file is missing, truncated, corrupt, unsafe or inconsistent with the others."""


class SelectionError(OPDError):
    """An option names a metric, module, kind or step that does not exist."""
