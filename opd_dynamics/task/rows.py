"""A task built from a user's rows (JSONL, CSV, Parquet, ``datasets``): column mapping, chat prompts, answer extraction.

Each row gives a prompt and a reference answer, found by column name (``columns`` overrides the defaults):

========== =========================================== ==================================================
role       default columns, first present wins          notes
========== =========================================== ==================================================
messages   ``messages``                                 role/content turns (TRL's conversational format);
                                                        a final assistant turn, as the template writes it,
                                                        is the solution
prompt     ``prompt``, ``question``, ``problem``         a string, or role/content turns (TRL's ``prompt``)
answer     ``answer``                                   default: the final assistant turn / the solution
solution   ``solution``, ``completion``                  the SFT / ``loglik`` target; default: the answer
split      ``split``                                    train / validation / test
========== =========================================== ==================================================

Conversational prompts are rendered with the model's own chat template
(``tokenizer.apply_chat_template(turns, add_generation_prompt=True)``, after :meth:`RowsTask.bind`) and encoded
without the tokenizer's special tokens (``add_special_tokens = False``: the template writes its own, as
``apply_chat_template(tokenize=True)`` and TRL's collators encode them); plain prompts stay plain unless
``chat_template=True`` (then each is one user turn). A row without a prompt or an answer is an
:class:`~opd_dynamics.errors.OPDError` naming the row.

**Splits**: a source read with an explicit split (``dataset:NAME:test``, ``FILE:test``) is one evaluation set that every
``split=`` reads; otherwise rows carry a ``split`` column or are shuffled with ``seed`` and cut 80/10/10.
``limit`` keeps a random subset of that many rows (drawn with ``seed``, original order kept).

**Answers**: ``extract(generation)`` is group 1 of the last ``answer_regex`` match; without a regex, the content of the
last ``\\boxed{…}`` (braces balanced) or else the whole generation; ``verify`` is exact match after stripping.

>>> task = RowsTask([{"question": "1+1=", "answer": 2}, {"question": "2+2=", "answer": 4}], split="test")
>>> [e.prompt for e in task.examples("test")], task.verify("\\\\boxed{2}", "2"), task.verify(" 2 ", "2")
(['1+1=', '2+2='], True, True)
>>> RowsTask([{"q": "1+1="}], source="t.jsonl")
Traceback (most recent call last):
...
opd_dynamics.errors.OPDError: t.jsonl: row 1 has no prompt (columns: ['q']) (fix: map it with --prompt-column NAME or --messages-column NAME)
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OPDError
from .protocol import SPLITS, Example, check_split, extract_last

DEFAULTS = {"messages": ("messages",), "prompt": ("prompt", "question", "problem"), "answer": ("answer",),
            "solution": ("solution", "completion"), "split": ("split",)}
AUTO = "last \\boxed{} else the whole generation"


@dataclass(frozen=True)
class _Row:
    prompt: str | list      # text, or role/content turns to render
    answer: str
    solution: str
    split: str | None
    reply: dict | None = None  # the final assistant turn of a conversation (its rendering is the solution)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` with balanced braces (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def _turns(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, dict) and "role" in t and "content" in t for t in value)


def _text(value: Any) -> str:
    """A cell as answer text: a completion's turns -> the assistant content; numbers -> str."""
    if _turns(value):
        return "".join(t["content"] for t in value if t["role"] == "assistant")
    return str(value)


class RowsTask:
    """A :class:`~opd_dynamics.task.protocol.Task` over rows (dicts). See the module docstring for the mapping."""

    def __init__(self, rows: list[dict[str, Any]], *, source: str = "rows", columns: dict[str, str] | None = None,
                 answer_regex: str | None = None, seed: int = 0, split: str | None = None, limit: int | None = None,
                 chat_template: bool | None = None, stop: tuple[str, ...] = (), max_new_tokens: int | None = None,
                 name: str | None = None, default_solution: str = "{answer}"):
        self.source, self.name = source, name or Path(str(source)).stem
        self.pattern = re.compile(answer_regex) if answer_regex else None
        self.extraction = f"regex {answer_regex}" if answer_regex else AUTO
        self.chat_template, self.stop, self.tokenizer = chat_template, tuple(stop), None
        columns = dict(columns or {})
        unknown = set(columns) - set(DEFAULTS)
        if unknown:
            raise OPDError(f"{source}: unknown column role(s) {sorted(unknown)}", hint=f"roles: {sorted(DEFAULTS)}")
        parsed = [self._parse(i, row, columns, default_solution) for i, row in enumerate(rows)]
        if limit is not None and int(limit) < len(parsed):
            keep = sorted(random.Random(seed).sample(range(len(parsed)), int(limit)))
            parsed = [parsed[i] for i in keep]
        self._splits: dict[str, list[_Row]] = {s: [] for s in SPLITS}
        if split is not None:
            for s in SPLITS:
                self._splits[s] = list(parsed)
        else:
            unsplit = []
            for r in parsed:
                (self._splits[r.split] if r.split is not None else unsplit).append(r)
            random.Random(seed).shuffle(unsplit)
            n_train, n_val = int(0.8 * len(unsplit)), int(0.1 * len(unsplit))
            self._splits["train"] += unsplit[:n_train]
            self._splits["validation"] += unsplit[n_train:n_train + n_val]
            self._splits["test"] += unsplit[n_train + n_val:]
        if not parsed:
            raise OPDError(f"{source}: no rows", hint="the task needs at least one prompt/answer row")
        # chat prompts are encoded as the template writes them, without the tokenizer's own <bos> (as
        # apply_chat_template(tokenize=True) and TRL's collators do); a plain prompt in a chat task is one user turn
        self.chat = bool(chat_template) if chat_template is not None else any(isinstance(r.prompt, list) for r in parsed)
        self.add_special_tokens = not self.chat
        longest = max(len(r.solution) for r in parsed)
        self.max_new_tokens = int(max_new_tokens or 2 * longest + 8)

    # -- reading rows ------------------------------------------------------------------------------------------
    def _col(self, row: dict, role: str, columns: dict[str, str]) -> str | None:
        if role in columns:
            return columns[role] if columns[role] in row else None
        return next((c for c in DEFAULTS[role] if c in row and row[c] is not None), None)

    def _missing(self, i: int, row: dict, what: str, hint: str) -> OPDError:
        return OPDError(f"{self.source}: row {i + 1} has no {what} (columns: {sorted(row)})", hint=hint)

    def _parse(self, i: int, row: dict, columns: dict[str, str], default_solution: str) -> _Row:
        for role, col in columns.items():
            if col not in row:
                raise self._missing(i, row, f"column {col!r} (mapped as its {role})",
                                    f"check --{role}-column, or fix that row")
        solution, reply = None, None
        msg_col = self._col(row, "messages", columns)
        if msg_col is not None and _turns(row[msg_col]):
            turns = list(row[msg_col])
            if turns and turns[-1]["role"] == "assistant":
                turns, reply = turns[:-1], dict(turns[-1])
                solution = str(reply["content"])
            prompt: str | list = turns
        else:
            p_col = self._col(row, "prompt", columns)
            if p_col is None:
                raise self._missing(i, row, "prompt", "map it with --prompt-column NAME or --messages-column NAME")
            prompt = row[p_col] if _turns(row[p_col]) else str(row[p_col])
        s_col = self._col(row, "solution", columns)
        if s_col is not None:
            solution = _text(row[s_col])
        a_col = self._col(row, "answer", columns)
        if a_col is not None:
            answer = _text(row[a_col]).strip()
        elif solution is not None:
            found = self.extract(solution)
            answer = found if found is not None else solution.strip()
        else:
            raise self._missing(i, row, "answer", "map it with --answer-column NAME (or end messages with an assistant turn)")
        split_col = self._col(row, "split", columns)
        split = str(row[split_col]) if split_col is not None else None
        if split is not None and split not in SPLITS:
            raise OPDError(f"{self.source}: row {i + 1} has split {split!r}", hint=f"use one of {SPLITS}")
        if solution is None:
            solution = default_solution.format(answer=answer)
        return _Row(prompt, answer, solution, split, reply)

    # -- the Task interface -------------------------------------------------------------------------------------
    def bind(self, tokenizer) -> "RowsTask":
        """Render prompts with this tokenizer's chat template (conversational rows, or all with chat_template=True)."""
        self.tokenizer = tokenizer
        return self

    def _render(self, prompt: str | list) -> str:
        if isinstance(prompt, str) and not self.chat:
            return prompt
        turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        tok = self.tokenizer
        if tok is None:
            raise OPDError(f"{self.source}: chat prompts need the model's tokenizer",
                           hint="call task.bind(tokenizer) (the CLI and the evaluators do)")
        if not getattr(tok, "chat_template", None):
            raise OPDError(f"{self.source}: the tokenizer has no chat template to render chat prompts",
                           hint="pass --tokenizer DIR with the chat model's tokenizer, or give plain prompts")
        return tok.apply_chat_template([dict(t) for t in turns], tokenize=False, add_generation_prompt=True)

    def _solution(self, r: _Row, prompt: str) -> str:
        """A conversation's solution as the chat template writes the assistant turn (what TRL trains on)."""
        if r.reply is None or not isinstance(r.prompt, list) or self.tokenizer is None:
            return r.solution
        full = self.tokenizer.apply_chat_template([*map(dict, r.prompt), r.reply], tokenize=False)
        return full[len(prompt):] if full.startswith(prompt) else r.solution

    def examples(self, split: str) -> list[Example]:
        check_split(split)
        out = []
        for r in self._splits[split]:
            prompt = self._render(r.prompt)
            out.append(Example(prompt, r.answer, self._solution(r, prompt)))
        return out

    def extract(self, generation: str) -> str | None:
        """The answer in a generation: the regex's group 1 (last match), else the last ``\\boxed{}``, else all."""
        if self.pattern is not None:
            return extract_last(self.pattern, generation)
        boxed = last_boxed(generation)
        return boxed if boxed is not None else generation.strip()

    def verify(self, generation: str, answer: str) -> bool:
        found = self.extract(generation)
        return found is not None and found == str(answer).strip()


class JsonlTask(RowsTask):
    """A task read from a JSON-lines file: one object per line with ``prompt`` and ``answer``.

    Optional fields: ``solution`` (SFT target; defaults to ``\\boxed{answer}``) and ``split``. The answer regex
    defaults to ``\\boxed{(.*?)}`` (the lab's convention: an unboxed answer does not count).

    >>> import json, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "t.jsonl"
    >>> _ = path.write_text(json.dumps({"prompt": "1+1=", "answer": "2", "split": "train"}))
    >>> task = JsonlTask(path)
    >>> task.examples("train")[0].solution, task.verify("so \\\\boxed{2}", "2"), task.verify("2", "2")
    ('\\\\boxed{2}', True, False)
    """

    def __init__(self, path: str | Path, answer_regex: str = r"\\boxed\{(.*?)\}", seed: int = 0,
                 max_new_tokens: int | None = None, name: str | None = None):
        self.path = Path(path)
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        for i, row in enumerate(rows):
            missing = {"prompt", "answer"} - row.keys()
            if missing:
                raise ValueError(f"{self.path}:{i + 1}: missing field(s) {sorted(missing)}")
        super().__init__(rows, source=str(self.path), answer_regex=answer_regex, seed=seed,
                         max_new_tokens=max_new_tokens, name=name or self.path.stem,
                         default_solution="\\boxed{{{answer}}}")
