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


def read_json(path, *, hint: str = "re-save the file", error: type[OPDError] = OPDError):
    """``json.loads`` of a file, with every way it can fail (unreadable, not UTF-8, not JSON) as one-line ``error``.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "config.json"; _ = p.write_bytes(b'{"a": "\\xff"}')
    >>> try:
    ...     read_json(p)
    ... except OPDError as e:
    ...     print(str(e).split(": ", 1)[1])
    not valid UTF-8 (byte 0xff at offset 7) (fix: re-save the file)
    """
    import json
    from pathlib import Path

    p = path if hasattr(path, "read_bytes") else Path(path)  # a local path or a storage path (s3://, hf://)
    try:
        return json.loads(p.read_bytes().decode("utf-8"))
    except OSError as e:
        raise error(f"{p}: cannot read ({e.strerror})", hint="check the path and its permissions") from None
    except UnicodeDecodeError as e:
        raise error(f"{p}: not valid UTF-8 (byte 0x{e.object[e.start]:02x} at offset {e.start})", hint=hint) from None
    except json.JSONDecodeError as e:
        raise error(f"{p}: not valid JSON ({e.msg}, line {e.lineno})", hint=hint) from None
