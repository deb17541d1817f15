"""Tasks with a verifier: the interface every trainer, evaluator and EffOPD search speaks.

A task is anything with two methods (duck-typed; :class:`Task` is a ``typing.Protocol``)::

    task.examples(split) -> list[Example]    # split in {"train", "validation", "test"}, fixed order
    task.verify(generation, answer) -> bool  # does the generated text carry the right answer?

and two plain attributes, ``name: str`` and ``max_new_tokens: int`` (a generous bound on the length
of a worked solution, in tokens of the character tokenizer, so generation knows when to stop).

An :class:`Example` is ``(prompt, answer, solution)``:

- ``prompt``: the text the model continues (no special tokens);
- ``answer``: the reference answer, a string, the thing ``verify`` compares against;
- ``solution``: a worked solution, the text a perfect model would write after the prompt, answer
  included, so that ``task.verify(example.solution, example.answer)`` is True. It is the SFT target.

Two tasks ship: :class:`~opd_dynamics.lab.addition.AdditionTask` (synthetic, built from a seed) and
:class:`JsonlTask` (your own prompts, answers and an answer regex).

>>> import json, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "t.jsonl"
>>> rows = [{"prompt": "1+1=", "answer": "2", "solution": "\\\\boxed{2}", "split": "train"}]
>>> _ = path.write_text("\\n".join(json.dumps(r) for r in rows))
>>> task = JsonlTask(path)
>>> task.examples("train")[0].answer
'2'
>>> task.verify("so the answer is \\\\boxed{2}", "2"), task.verify("\\\\boxed{3}", "2")
(True, False)
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

SPLITS = ("train", "validation", "test")


class Example(NamedTuple):
    prompt: str
    answer: str
    solution: str


@runtime_checkable
class Task(Protocol):
    name: str
    max_new_tokens: int

    def examples(self, split: str) -> list[Example]: ...

    def verify(self, generation: str, answer: str) -> bool: ...


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def extract_last(pattern: re.Pattern[str], text: str) -> str | None:
    """The first group of the *last* match of ``pattern`` in ``text``, stripped (None if no match).

    The last match, because a worked solution may mention intermediate values in the same form.
    """
    matches = pattern.findall(text)
    if not matches:
        return None
    last = matches[-1]
    return (last[0] if isinstance(last, tuple) else last).strip()


class JsonlTask:
    """A task read from a JSON-lines file: one object per line with ``prompt`` and ``answer``.

    Optional fields: ``solution`` (SFT target; defaults to ``\\boxed{answer}``) and ``split``
    (``train``/``validation``/``test``). Rows without a split are shuffled with ``seed`` and cut
    80/10/10 — deterministic, so the same file and seed always give the same splits.

    ``verify`` extracts group 1 of the last ``answer_regex`` match and compares it with the answer as
    strings after stripping whitespace: exact match, no numeric normalisation (make the regex do it).
    """

    def __init__(self, path: str | Path, answer_regex: str = r"\\boxed\{(.*?)\}", seed: int = 0,
                 max_new_tokens: int | None = None, name: str | None = None):
        self.path = Path(path)
        self.pattern = re.compile(answer_regex)
        self.name = name or self.path.stem
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        for i, row in enumerate(rows):
            missing = {"prompt", "answer"} - row.keys()
            if missing:
                raise ValueError(f"{self.path}:{i + 1}: missing field(s) {sorted(missing)}")
        self._splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
        unsplit = []
        for row in rows:
            answer = str(row["answer"])
            ex = Example(row["prompt"], answer, row.get("solution", f"\\boxed{{{answer}}}"))
            if "split" in row:
                check_split(row["split"])
                self._splits[row["split"]].append(ex)
            else:
                unsplit.append(ex)
        random.Random(seed).shuffle(unsplit)
        n_train, n_val = int(0.8 * len(unsplit)), int(0.1 * len(unsplit))
        self._splits["train"] += unsplit[:n_train]
        self._splits["validation"] += unsplit[n_train:n_train + n_val]
        self._splits["test"] += unsplit[n_train + n_val:]
        longest = max((len(e.solution) for e in self._splits["train"]), default=32)
        self.max_new_tokens = max_new_tokens or 2 * longest + 8

    def examples(self, split: str) -> list[Example]:
        check_split(split)
        return list(self._splits[split])

    def verify(self, generation: str, answer: str) -> bool:
        found = extract_last(self.pattern, generation)
        return found is not None and found == str(answer).strip()
