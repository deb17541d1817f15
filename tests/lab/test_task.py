"""The task interface: splits, worked solutions and the verifier; JsonlTask on a temp file."""

import json

import pytest

from opd_dynamics.lab import AdditionTask, Example, JsonlTask, Task


@pytest.fixture(scope="module")
def task():
    return AdditionTask(digits=3, n_train=300, n_validation=50, n_test=50, seed=3)


def test_addition_is_a_task(task):
    assert isinstance(task, Task)


def test_splits_are_disjoint_deterministic_and_sized(task):
    prompts = {s: {e.prompt for e in task.examples(s)} for s in ("train", "validation", "test")}
    assert [len(p) for p in prompts.values()] == [300, 50, 50]
    assert not (prompts["train"] & prompts["validation"]) and not (prompts["train"] & prompts["test"])
    assert task.examples("test") == AdditionTask(3, 300, 50, 50, seed=3).examples("test")
    assert task.examples("test") != AdditionTask(3, 300, 50, 50, seed=4).examples("test")


def test_every_worked_solution_is_correct_and_fits(task):
    for ex in task.examples("train"):
        a, b = (int(x) for x in ex.prompt.rstrip("=").split("+"))
        assert ex.answer == str(a + b)
        assert task.verify(ex.solution, ex.answer)
        assert len(ex.solution) + 1 <= task.max_new_tokens


@pytest.mark.parametrize("generation,ok", [
    ("7+5+0=12 4+8+1=13 0+2+1=03 #332", True),
    ("#332", True),
    ("#331 #332", True),          # the last answer counts
    ("#332 #331", False),
    ("7+5+0=12 4+8+1=13 0+2+1=03 #3321", False),
    ("7+5+0=12 4+8+1=13 0+2+1=03 332", False),  # no answer marker
    ("", False),
])
def test_verifier(task, generation, ok):
    assert task.verify(generation, "332") is ok


def test_unknown_split_is_refused(task):
    with pytest.raises(ValueError, match="split"):
        task.examples("dev")


def test_too_many_problems_is_refused():
    with pytest.raises(ValueError, match="only 100"):
        AdditionTask(digits=1, n_train=90, n_validation=10, n_test=10)


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_task_with_splits(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": i, "split": s} for i, s in enumerate(["train"] * 3 + ["test"])]
    task = JsonlTask(write_jsonl(tmp_path / "t.jsonl", rows))
    assert isinstance(task, Task)
    assert [e.prompt for e in task.examples("train")] == ["q0", "q1", "q2"]
    assert task.examples("test") == [Example("q3", "3", "\\boxed{3}")]
    assert task.examples("validation") == []
    assert task.verify("work... \\boxed{ 3 }", "3") and not task.verify("\\boxed{4}", "3")
    assert not task.verify("3", "3")


def test_jsonl_task_splits_by_seed_and_custom_regex(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i), "solution": f"so #### {i}"} for i in range(20)]
    path = write_jsonl(tmp_path / "t.jsonl", rows)
    task = JsonlTask(path, answer_regex=r"####\s*(\S+)", seed=1)
    sizes = [len(task.examples(s)) for s in ("train", "validation", "test")]
    assert sizes == [16, 2, 2]
    assert task.examples("train") == JsonlTask(path, answer_regex=r"####\s*(\S+)", seed=1).examples("train")
    assert all(task.verify(e.solution, e.answer) for e in task.examples("train"))
    assert task.max_new_tokens >= max(len(e.solution) for e in task.examples("train"))


def test_jsonl_task_names_the_bad_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": 1}, {"prompt": "b"}])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field\(s\) \['answer'\]"):
        JsonlTask(path)
