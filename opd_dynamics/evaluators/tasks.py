"""Which task an evaluator scores on, as a JSON-able spec: the lab's addition task or the user's own rows.

- ``lab:PRESET`` — :func:`opd_dynamics.task.addition.lab_task` (the task the reference runs trained on);
- ``PATH`` — a ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file (:class:`opd_dynamics.task.rows.RowsTask`);
  ``PATH:SPLIT`` reads the whole file as one evaluation set;
- ``dataset:PATH_OR_NAME[:SPLIT]`` — a ``Dataset.save_to_disk`` directory or anything ``datasets.load_dataset``
  opens offline; the named split is one evaluation set that every evaluator ``split=`` reads.

Options (:data:`OPTIONS`, the CLI's task flags): ``columns`` (role -> column: prompt, answer, solution, messages,
split), ``answer_regex``, ``chat_template`` (render plain prompts as a user turn), ``limit`` (a random subset of that
many rows, drawn with ``seed``), ``stop`` (strings that end a generation), ``max_new_tokens``.

>>> TaskSpec.parse("lab:tiny", seed=1).to_json()
{'kind': 'lab', 'preset': 'tiny', 'seed': 1}
>>> TaskSpec.parse("lab:tiny").build().name
'addition1'
>>> TaskSpec.parse("dataset:openai/gsm8k:test", limit=50).to_json()
{'kind': 'dataset', 'path': 'openai/gsm8k', 'split': 'test', 'seed': 0, 'limit': 50}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OPDError
from .sources import FILE_SUFFIXES, read_dataset, read_file

DEFAULT_REGEX = r"\\boxed\{(.*?)\}"   # the legacy ``jsonl`` kind (manifests written before file tasks)
OPTIONS = ("columns", "answer_regex", "chat_template", "limit", "stop", "max_new_tokens")


@dataclass(frozen=True)
class TaskSpec:
    kind: str                  # "lab" | "file" | "dataset" | "jsonl" (legacy: \\boxed{} answers only)
    preset: str | None = None  # lab
    path: str | None = None    # file, dataset (a directory or a load_dataset name)
    split: str | None = None   # file, dataset: read as one evaluation set
    answer_regex: str | None = None
    seed: int = 0
    columns: dict[str, str] | None = None
    chat_template: bool | None = None
    limit: int | None = None
    stop: tuple[str, ...] | None = None
    max_new_tokens: int | None = None

    @classmethod
    def parse(cls, text: str, *, seed: int = 0, **options: Any) -> "TaskSpec":
        """``lab:PRESET``, ``PATH[:SPLIT]`` or ``dataset:PATH_OR_NAME[:SPLIT]`` plus task options."""
        unknown = set(options) - set(OPTIONS)
        if unknown:
            raise OPDError(f"unknown task option(s) {sorted(unknown)}", hint=f"use {', '.join(OPTIONS)}")
        opts = {k: v for k, v in options.items() if v not in (None, (), [], {})}
        if "stop" in opts:
            opts["stop"] = tuple(opts["stop"])
        if text.startswith("lab:"):
            from ..task.addition import LAB_TASKS

            preset = text.removeprefix("lab:")
            if preset not in LAB_TASKS:
                raise OPDError(f"--task {text!r}: no lab preset {preset!r}", hint=f"use one of {sorted(LAB_TASKS)}")
            if opts:
                raise OPDError(f"--task {text}: the lab task takes no task options (got {sorted(opts)})",
                               hint="drop them; the lab task has its own prompts and verifier")
            return cls("lab", preset=preset, seed=seed)
        if text.startswith("dataset:"):
            name, _, split = text.removeprefix("dataset:").partition(":")
            if not name:
                raise OPDError(f"--task {text!r}: no dataset named", hint="dataset:PATH_OR_NAME:split")
            path = str(Path(name).resolve()) if Path(name).exists() else name
            return cls("dataset", path=path, split=split or None, seed=seed, **opts)
        p, split = Path(text), None
        if not p.is_file() and ":" in text and Path(text.rpartition(":")[0]).is_file():
            p, split = Path(text.rpartition(":")[0]), text.rpartition(":")[2]
        if not p.is_file():
            raise OPDError(f"--task {text!r}: no such file", hint="give lab:PRESET, a JSONL/CSV/Parquet file of "
                           "prompt/answer rows, or dataset:PATH_OR_NAME:split")
        if p.suffix.lower() not in FILE_SUFFIXES:
            raise OPDError(f"--task {text!r}: unknown file type {p.suffix!r}",
                           hint=f"use one of {', '.join(FILE_SUFFIXES)}, or dataset:PATH_OR_NAME:split")
        return cls("file", path=str(p.resolve()), split=split, seed=seed, **opts)

    def build(self):
        if self.kind == "lab":
            from ..task.addition import lab_task

            return lab_task(self.preset, self.seed)
        if self.kind == "jsonl":
            from ..task.rows import JsonlTask

            try:
                return JsonlTask(self.path, answer_regex=self.answer_regex or DEFAULT_REGEX, seed=self.seed)
            except OSError as e:
                raise OPDError(f"{self.path}: cannot read ({e.strerror})", hint="check the path and permissions") from None
            except (ValueError, TypeError, AttributeError) as e:  # bad JSON, not UTF-8, rows that are not objects
                why = str(e).removeprefix(f"{self.path}:").strip()
                raise OPDError(f"{self.path}: {why}", hint="one UTF-8 JSON object per line with prompt and answer") from None
        from ..task.rows import RowsTask

        rows = read_file(self.path) if self.kind == "file" else read_dataset(self.path, self.split)
        source = self.path if self.kind == "file" else f"dataset:{self.path}" + (f":{self.split}" if self.split else "")
        return RowsTask(rows, source=source, columns=self.columns, answer_regex=self.answer_regex, seed=self.seed,
                        split=self.split, limit=self.limit, chat_template=self.chat_template, stop=self.stop or (),
                        max_new_tokens=self.max_new_tokens, name=Path(self.path).stem)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items() if v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TaskSpec":
        d = dict(d)
        if d.get("stop") is not None:
            d["stop"] = tuple(d["stop"])
        return cls(**d)


def detect(run_root: Path) -> TaskSpec | None:
    """The lab task of a reference run (``out/runs/ARM`` beside ``out/summary.json``), else None."""
    summary = Path(run_root).resolve().parent.parent / "summary.json"
    try:
        d = json.loads(summary.read_text())
        return TaskSpec("lab", preset=d["preset"], seed=int(d["seed"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
