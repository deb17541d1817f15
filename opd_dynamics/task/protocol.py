"""Tasks with a verifier: the interface every trainer, evaluator and EffOPD search speaks.

A task is anything with two methods (duck-typed; :class:`Task` is a ``typing.Protocol``)::

    task.examples(split) -> list[Example]    # split in {"train", "validation", "test"}, fixed order
    task.verify(generation, answer) -> bool  # does the generated text carry the right answer?

and two plain attributes, ``name: str`` and ``max_new_tokens: int`` (a generous bound on the length
of a worked solution, in tokens, so generation knows when to stop). Optional, read with ``getattr``:
``stop: tuple[str, ...]`` (generation of a row ends at the first of these strings), ``extract(generation)``
(the answer a checker compares, see :mod:`opd_dynamics.evaluators.checkers`), ``extraction: str`` (how, for
manifests), ``bind(tokenizer)`` (tasks whose prompts are rendered with the model's chat template) and
``add_special_tokens: bool`` (False for chat-rendered prompts: the template wrote the special tokens).

An :class:`Example` is ``(prompt, answer, solution)``:

- ``prompt``: the text the model continues (no special tokens);
- ``answer``: the reference answer, a string, the thing ``verify`` compares against;
- ``solution``: a worked solution, the text a perfect model would write after the prompt, answer
  included, so that ``task.verify(example.solution, example.answer)`` is True. It is the SFT target.

Two tasks ship: :class:`~opd_dynamics.task.addition.AdditionTask` (synthetic, built from a seed) and
:class:`~opd_dynamics.task.rows.RowsTask` (your own rows: JSONL, CSV, Parquet, ``datasets``; chat or plain
prompts), with :class:`~opd_dynamics.task.rows.JsonlTask` its JSONL form.

>>> from opd_dynamics.task.addition import AdditionTask
>>> isinstance(AdditionTask(digits=1, n_train=8, n_validation=1, n_test=1), Task)
True
"""

from __future__ import annotations

import re
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


