"""Which task an evaluator scores on, as a JSON-able spec: the lab's addition task or a user's JSONL file.

- ``lab:PRESET`` — :func:`opd_dynamics.lab.reference.make_task` (the task the reference runs trained on);
- ``PATH.jsonl`` — :class:`opd_dynamics.lab.task.JsonlTask` (``answer_regex`` picks the answer out of a generation).

>>> TaskSpec.parse("lab:tiny", seed=1).to_json()
{'kind': 'lab', 'preset': 'tiny', 'seed': 1}
>>> TaskSpec.parse("lab:tiny").build().name
'addition1'
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OPDError

DEFAULT_REGEX = r"\\boxed\{(.*?)\}"


@dataclass(frozen=True)
class TaskSpec:
    kind: str                  # "lab" | "jsonl"
    preset: str | None = None  # lab
    path: str | None = None    # jsonl
    answer_regex: str | None = None
    seed: int = 0

    @classmethod
    def parse(cls, text: str, *, seed: int = 0, answer_regex: str | None = None) -> "TaskSpec":
        if text.startswith("lab:"):
            from ..lab.presets import PRESETS

            preset = text.removeprefix("lab:")
            if preset not in PRESETS:
                raise OPDError(f"--task {text!r}: no lab preset {preset!r}", hint=f"use one of {sorted(PRESETS)}")
            return cls("lab", preset=preset, seed=seed)
        p = Path(text)
        if not p.is_file():
            raise OPDError(f"--task {text!r}: no such file", hint="give lab:PRESET or a JSONL file of prompt/answer rows")
        return cls("jsonl", path=str(p.resolve()), answer_regex=answer_regex, seed=seed)

    def build(self):
        if self.kind == "lab":
            from ..lab.reference import make_task

            return make_task(self.preset, self.seed)
        from ..lab.task import JsonlTask

        try:
            return JsonlTask(self.path, answer_regex=self.answer_regex or DEFAULT_REGEX, seed=self.seed)
        except OSError as e:
            raise OPDError(f"{self.path}: cannot read ({e.strerror})", hint="check the path and permissions") from None
        except (ValueError, TypeError, AttributeError) as e:  # bad JSON, not UTF-8, rows that are not objects
            why = str(e).removeprefix(f"{self.path}:")
            raise OPDError(f"{self.path}: {why}", hint="one UTF-8 JSON object per line with prompt and answer") from None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TaskSpec":
        return cls(**d)


def detect(run_root: Path) -> TaskSpec | None:
    """The lab task of a reference run (``out/runs/ARM`` beside ``out/summary.json``), else None."""
    summary = Path(run_root).resolve().parent.parent / "summary.json"
    try:
        d = json.loads(summary.read_text())
        return TaskSpec("lab", preset=d["preset"], seed=int(d["seed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
