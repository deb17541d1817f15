"""Answer checkers: does a generation carry the reference answer? ``exact`` (the task's own verifier) or ``math``.

- ``exact``: ``task.verify(generation, answer)`` — for a rows task, the extracted answer (``--answer-regex``, else the
  last ``\\boxed{}``, else the whole generation) equals the reference after stripping; for the lab task, its own
  verifier. The default everywhere.
- ``math``: the `math-verify <https://github.com/huggingface/Math-Verify>`_ package decides LaTeX / numeric
  equivalence (``\\frac{1}{2}`` = ``0.5`` = ``1/2``, ``10\\%`` = ``0.1``, units after a number ignored). The reference
  is parsed as ``$answer$`` (unless it already holds ``$`` or ``\\boxed``); the generation is parsed whole — math-verify
  extracts the last ``\\boxed{}`` first, then LaTeX, then a plain number — or, when the task has an ``--answer-regex``,
  the regex's match wrapped in ``$…$``. Parsing and comparison use math-verify's own timeouts on the main thread.

>>> check = build("math", None)
>>> check("so it is \\\\boxed{\\\\frac{1}{2}}", "0.5"), check("\\\\boxed{3}", "4")
(True, False)
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from ..errors import OPDError

CHECKERS = ("exact", "math")
MATH_EXTRACTION = "math-verify: last \\boxed{}, else LaTeX, else a number"


def _math_verify():
    try:
        import math_verify
    except ImportError:
        raise OPDError("checker=math needs the math-verify package", hint="pip install math-verify") from None
    return math_verify


def math_gold(answer: str) -> str:
    """How the reference answer is handed to math-verify: ``$answer$`` unless it carries its own delimiters."""
    a = str(answer).strip()
    return a if ("$" in a or "\\boxed" in a) else f"${a}$"


def math_equal(prediction: str, answer: str) -> bool:
    """math-verify's verdict: ``verify(parse(math_gold(answer)), parse(prediction))``."""
    mv = _math_verify()
    kw: dict[str, Any] = {} if threading.current_thread() is threading.main_thread() else {"parsing_timeout": None}
    gold = mv.parse(math_gold(answer), **kw)
    pred = mv.parse(prediction, **kw)
    if not gold or not pred:
        return False
    vkw = {} if not kw else {"timeout_seconds": None}
    try:
        return bool(mv.verify(gold, pred, **vkw))
    except Exception:  # a comparison math-verify cannot decide counts as wrong, as in its own evaluations
        return False


def build(name: str, task) -> Callable[[str, str], bool]:
    """``check(generation, answer) -> bool`` for checker ``name`` on ``task``."""
    if name == "exact":
        return task.verify
    if name == "math":
        _math_verify()
        pattern = getattr(task, "pattern", None)
        extract = getattr(task, "extract", None)
        if pattern is not None and extract is not None:
            def check(generation: str, answer: str) -> bool:
                found = extract(generation)
                return found is not None and math_equal(f"${found}$", answer)
            return check
        return math_equal
    raise OPDError(f"checker={name!r} not understood", hint=f"use one of {CHECKERS}")


def describe(name: str, task) -> dict[str, str]:
    """What the manifest records: the checker and how the answer is extracted from a generation."""
    if name == "math":
        pattern = getattr(task, "pattern", None)
        extraction = f"regex {pattern.pattern}, then math-verify" if pattern is not None else MATH_EXTRACTION
    else:
        extraction = getattr(task, "extraction", None) or f"{type(task).__name__}.verify"
    return {"checker": name, "extraction": extraction}
