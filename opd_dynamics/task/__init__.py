"""Tasks with a verifier, the library's one task protocol (trainers, evaluators and the EffOPD search all speak it).

    protocol.py   Task (examples(split), verify(generation, answer)), Example, the splits
    addition.py   AdditionTask: the reference runs' synthetic task, and LAB_TASKS (its size at each lab preset)
    rows.py       RowsTask / JsonlTask: your own rows, column mapping, chat prompts, answer extraction

Nothing here imports torch or the lab: a task is plain text in, plain text out.
"""
from .addition import LAB_TASKS, AdditionTask, lab_task
from .protocol import SPLITS, Example, Task, check_split, extract_last
from .rows import JsonlTask, RowsTask

__all__ = ["LAB_TASKS", "SPLITS", "AdditionTask", "Example", "JsonlTask", "RowsTask", "Task", "check_split",
           "extract_last", "lab_task"]
