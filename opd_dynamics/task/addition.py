"""Multi-digit addition with the carries written out: a synthetic reasoning task with a verifier.

A problem adds two ``digits``-digit numbers, zero-padded so every column sits at a fixed position::

    prompt    "047+285="
    solution  "7+5+0=12 4+8+1=13 0+2+1=03 #332"

Each step adds one column, least significant first, as ``x+y+c=s`` with the incoming carry ``c`` and
the two-digit column sum ``s`` (its first digit is the next carry). The answer follows ``#``; it is the
last digits of the steps read backwards, with the final carry in front when it is 1 — so a model
must both compute and look back. The verifier accepts a generation whose last ``#<digits>`` equals
the answer; the steps themselves are not checked (as with a math verifier that reads the box).

Problems are drawn without replacement from all 10^(2·digits) pairs with ``random.Random(seed)``, and
the splits are disjoint. Zero padding is a deliberate simplification for models with 64–128 hidden
units trained for minutes on a CPU: it keeps the task about carrying, not about aligning digits.

>>> task = AdditionTask(digits=3, n_train=8, n_validation=2, n_test=2, seed=0)
>>> ex = task.examples("train")[0]
>>> task.verify(ex.solution, ex.answer), task.verify(ex.solution + "0", ex.answer)
(True, False)
>>> AdditionTask.solve(47, 285, 3)
'7+5+0=12 4+8+1=13 0+2+1=03 #332'
"""

from __future__ import annotations

import random
import re

from .protocol import Example, check_split, extract_last

ANSWER = re.compile(r"#(\d+)")


class AdditionTask:
    """``digits``-digit addition; ``n_*`` problems per split, drawn from ``seed``."""

    def __init__(self, digits: int = 3, n_train: int = 4000, n_validation: int = 200,
                 n_test: int = 200, seed: int = 0):
        total = n_train + n_validation + n_test
        if total > 10 ** (2 * digits):
            raise ValueError(f"{total} problems requested but only {10 ** (2 * digits)} exist "
                             f"with {digits} digits")
        self.digits = digits
        self.seed = seed
        self.name = f"addition{digits}"
        # steps of 8 chars + spaces + "#" + up to digits+1 answer digits, plus slack for eos/mistakes
        self.max_new_tokens = 9 * digits + digits + 4
        codes = random.Random(seed).sample(range(10 ** (2 * digits)), total)
        pairs = [divmod(c, 10 ** digits) for c in codes]
        cuts = {"train": pairs[:n_train], "validation": pairs[n_train:n_train + n_validation],
                "test": pairs[n_train + n_validation:]}
        self._splits = {s: [self.example(a, b) for a, b in ps] for s, ps in cuts.items()}

    def example(self, a: int, b: int) -> Example:
        d = self.digits
        return Example(f"{a:0{d}d}+{b:0{d}d}=", str(a + b), self.solve(a, b, d))

    @staticmethod
    def solve(a: int, b: int, digits: int) -> str:
        steps, carry = [], 0
        for i in range(digits):
            x, y = a // 10 ** i % 10, b // 10 ** i % 10
            s = x + y + carry
            steps.append(f"{x}+{y}+{carry}={s:02d}")
            carry = s // 10
        return " ".join(steps) + f" #{a + b}"

    def examples(self, split: str) -> list[Example]:
        check_split(split)
        return list(self._splits[split])

    def verify(self, generation: str, answer: str) -> bool:
        return extract_last(ANSWER, generation) == str(answer).strip()


# The reference runs' task at each lab preset (``opd_dynamics.lab.presets`` builds its presets from these rows), so a
# reference model can be scored on its own task (``--task lab:PRESET``) without loading the trainer.
LAB_TASKS: dict[str, dict[str, int]] = {
    "default": {"digits": 2, "n_train": 4000, "n_eval": 200},
    "small": {"digits": 2, "n_train": 2000, "n_eval": 100},
    "tiny": {"digits": 1, "n_train": 64, "n_eval": 16},
}


def lab_task(preset: str, seed: int = 0) -> AdditionTask:
    """The task lab preset ``preset`` trains on (validation and test both ``n_eval`` problems).

    >>> t = lab_task("tiny", seed=0); (t.digits, len(t.examples("train")), len(t.examples("test")))
    (1, 64, 16)
    """
    p = LAB_TASKS[preset]
    return AdditionTask(p["digits"], p["n_train"], p["n_eval"], p["n_eval"], seed)
