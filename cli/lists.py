"""The one parser of comma-separated option values (``--steps 1,2,4``, ``--alphas 0,0.5,1``, ``--formats png,pdf``).

Items are stripped and empty items dropped, so ``"1, 2,,4"`` is ``[1, 2, 4]``; an absent or empty value is
``None`` (the command's default). ``--metrics`` has its own grammar (settings after ``:`` hold commas too):
:func:`opd_dynamics_cli.app._split_specs`.

>>> comma_list("1, 2,,4", "--steps", int), comma_list(None, "--steps", int), comma_list("png,pdf", "--formats")
([1, 2, 4], None, ['png', 'pdf'])
"""
from __future__ import annotations

from typing import Callable, TypeVar

from opd_dynamics.errors import OPDError

T = TypeVar("T")

_WORDS = {int: ("integers", "1,2,4,8"), float: ("numbers", "0,0.5,1")}


def comma_list(text: str | None, flag: str, of: Callable[[str], T] = str) -> list[T] | None:
    """``text`` split at commas, each item converted by ``of``; a bad item is a one-line error naming ``flag``."""
    if not text:
        return None
    items = [p.strip() for p in text.split(",") if p.strip()]
    try:
        return [of(p) for p in items]
    except ValueError:
        what, example = _WORDS.get(of, ("values", "a,b"))
        raise OPDError(f"{flag} {text!r}: expected comma-separated {what}", hint=f"e.g. {flag} {example}") from None
