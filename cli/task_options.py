"""The task flags every scoring command shares (``--answer-regex``, ``--chat-template``, ``--limit``, column mapping …).

``@task_options`` appends them to a command's signature (typer reads ``__signature__``) and hands the command one
``task_options`` dict — the keyword arguments of :meth:`opd_dynamics.evaluators.TaskSpec.parse` — plus ``tokenizer``.
"""
from __future__ import annotations

import codecs
import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

_O = inspect.Parameter.KEYWORD_ONLY
PARAMS = [
    inspect.Parameter("answer_regex", _O, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--answer-regex", help="Group 1 of the last match is the answer (default: last \\boxed{}, else the whole generation).")]),
    inspect.Parameter("chat_template", _O, default=None, annotation=Annotated[Optional[bool], typer.Option(
        "--chat-template/--no-chat-template", help="Render plain prompts with the tokenizer's chat template (chat rows always are).")]),
    inspect.Parameter("limit", _O, default=None, annotation=Annotated[Optional[int], typer.Option(
        "--limit", help="Score a random subset of this many rows (drawn with --seed).")]),
    inspect.Parameter("prompt_column", _O, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--prompt-column", help="Column with the prompt (default: prompt, question or problem).")]),
    inspect.Parameter("answer_column", _O, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--answer-column", help="Column with the reference answer (default: answer, else the final assistant turn).")]),
    inspect.Parameter("solution_column", _O, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--solution-column", help="Column with a worked solution, the loglik/kl target (default: solution or completion).")]),
    inspect.Parameter("messages_column", _O, default=None, annotation=Annotated[Optional[str], typer.Option(
        "--messages-column", help="Column with role/content turns (default: messages).")]),
    inspect.Parameter("stop", _O, default=None, annotation=Annotated[Optional[list[str]], typer.Option(
        "--stop", help="Stop generating at this string (repeatable; escapes such as \\n are decoded).")]),
    inspect.Parameter("max_new_tokens", _O, default=None, annotation=Annotated[Optional[int], typer.Option(
        "--max-new-tokens", help="Generation length bound (default: from the task's longest solution).")]),
    inspect.Parameter("tokenizer", _O, default=None, annotation=Annotated[Optional[Path], typer.Option(
        "--tokenizer", help="Tokenizer directory (default: the base's, else the run's final checkpoint's).")]),
]
NAMES = [p.name for p in PARAMS]


def collect(kw: dict) -> tuple[dict, Path | None]:
    """Pop the shared flags from ``kw``: (TaskSpec options, tokenizer directory)."""
    vals = {n: kw.pop(n, None) for n in NAMES}
    columns = {role: vals.pop(f"{role}_column") for role in ("prompt", "answer", "solution", "messages")}
    columns = {k: v for k, v in columns.items() if v}
    tokenizer = vals.pop("tokenizer")
    if vals.get("stop"):  # `--stop '\n'` reaches us as backslash + n
        vals["stop"] = [codecs.decode(x, "unicode_escape") for x in vals["stop"]]
    opts = {k: v for k, v in vals.items() if v is not None}
    if columns:
        opts["columns"] = columns
    return opts, tokenizer


def task_options(fn):
    """Decorator: add the shared task flags to a typer command; it receives ``task_options=`` and ``tokenizer=``."""
    hints = typing.get_type_hints(fn, include_extras=True)  # resolved in fn's module (typer reads them)
    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        opts, tokenizer = collect(kw)
        return fn(*args, task_options=opts, tokenizer=tokenizer, **kw)

    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
              if p.name not in ("task_options", "tokenizer")]
    wrapper.__signature__ = sig.replace(parameters=params + PARAMS, return_annotation=None)
    wrapper.__annotations__ = {p.name: p.annotation for p in params + PARAMS}
    del wrapper.__wrapped__  # typer must read this signature, not the wrapped function's
    return wrapper
