"""Tasks from where users keep them (JSONL, CSV, Parquet, datasets), chat prompts, answer checkers, stop strings."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from cli_runner import run_cli

from opd_dynamics.errors import OPDError
from opd_dynamics.evaluators import EvalContext, EvalSpec, TaskSpec
from opd_dynamics.evaluators.checkers import math_equal, math_gold
from opd_dynamics.task.rows import RowsTask, last_boxed
from opd_dynamics.lab.tokenizer import char_tokenizer, chat_tokenizer

ROWS = [{"question": f"{a}+{b}=", "answer": str(a + b)} for a in range(3) for b in range(3)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_source_gives_the_same_examples(tmp_path):
    from datasets import Dataset, DatasetDict

    write_jsonl(tmp_path / "t.jsonl", ROWS)
    pd.DataFrame(ROWS).to_csv(tmp_path / "t.csv", index=False)
    pd.DataFrame(ROWS).to_parquet(tmp_path / "t.parquet")
    Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    DatasetDict({"test": Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "dd"))
    texts = [f"{tmp_path}/t.jsonl:test", f"{tmp_path}/t.csv:test", f"{tmp_path}/t.parquet:test",
             f"dataset:{tmp_path}/ds:test", f"dataset:{tmp_path}/dd:test"]
    want = [(r["question"], r["answer"], r["answer"]) for r in ROWS]
    for text in texts:
        spec = TaskSpec.parse(text)
        task = TaskSpec.from_json(json.loads(json.dumps(spec.to_json()))).build()
        assert [tuple(e) for e in task.examples("test")] == want, text
        assert task.examples("validation") == task.examples("test")  # one evaluation set read by every split=


def test_column_mapping_limit_and_row_errors(tmp_path):
    rows = [{"q": r["question"], "a": r["answer"], "s": f"so {r['answer']}"} for r in ROWS]
    task = RowsTask(rows, columns={"prompt": "q", "answer": "a", "solution": "s"}, split="test", limit=4, seed=1)
    exs = task.examples("test")
    assert len(exs) == 4 and exs == RowsTask(rows, columns={"prompt": "q", "answer": "a", "solution": "s"},
                                             split="test", limit=4, seed=1).examples("test")
    assert [e.prompt for e in exs] == sorted((e.prompt for e in exs), key=[r["q"] for r in rows].index)  # order kept
    assert exs[0].solution.startswith("so ")
    with pytest.raises(OPDError, match=r"t.jsonl: row 2 has no answer \(columns: \['question'\]\)"):
        RowsTask([ROWS[0], {"question": "x"}], source="t.jsonl")
    with pytest.raises(OPDError, match=r"row 2 has no column 'a' \(mapped as its answer\)"):
        RowsTask([rows[0], {"q": "x"}], columns={"prompt": "q", "answer": "a"})
    with pytest.raises(OPDError, match="row 1 has no prompt"):
        RowsTask([{"answer": "1"}], source="t.jsonl")


def test_conversational_rows_use_the_models_chat_template():
    tok = chat_tokenizer()
    rows = [{"messages": [{"role": "system", "content": "add"}, {"role": "user", "content": "1+2="},
                          {"role": "assistant", "content": "3"}]},
            {"prompt": [{"role": "user", "content": "2+2="}], "completion": [{"role": "assistant", "content": "4"}]}]
    task = RowsTask(rows, split="test").bind(tok)
    # the solution is the assistant turn as the template writes it (what TRL trains on)
    assert [tuple(e) for e in task.examples("test")] == [("<s>add\n<u>1+2=\n<a>", "3", "3\n"), ("<u>2+2=\n<a>", "4", "4")]
    plain = RowsTask(ROWS[:1], split="test")
    assert plain.bind(tok).examples("test")[0].prompt == "0+0="                       # plain stays plain
    assert RowsTask(ROWS[:1], split="test", chat_template=True).bind(tok).examples("test")[0].prompt == "<u>0+0=\n<a>"
    with pytest.raises(OPDError, match="no chat template"):
        RowsTask(rows, split="test").bind(char_tokenizer()).examples("test")


def test_extraction_regex_and_boxed():
    task = RowsTask(ROWS, split="test")
    assert task.verify("it is \\boxed{\\frac{1}{2}}", "\\frac{1}{2}") and task.verify(" 3\n", "3")
    assert not task.verify("3 apples", "3")
    assert last_boxed("\\boxed{1} then \\boxed{\\frac{2}{3}}") == "\\frac{2}{3}" and last_boxed("none") is None
    hashes = RowsTask(ROWS, split="test", answer_regex=r"####\s*(\S+)")
    assert hashes.verify("work #### 7", "7") and not hashes.verify("7", "7")


# (reference, generation, expected): fractions, \frac, units, boxed vs unboxed, percent, wrong answers
MATH_TABLE = [
    ("\\frac{1}{2}", "0.5", True),
    ("1/2", "so the answer is \\boxed{\\frac12}", True),
    ("0.5", "\\boxed{\\dfrac{1}{2}}", True),
    ("\\frac{3}{4}", "$\\frac{6}{8}$", True),
    ("3", "The answer is \\boxed{3}", True),
    ("3", "3 cm", True),
    ("3", "\\boxed{3\\text{ cm}}", True),
    ("10\\%", "0.1", True),
    ("\\sqrt{2}", "\\boxed{\\sqrt 2}", True),
    ("(1,2)", "\\boxed{(1, 2)}", True),
    ("72", "48 + 24 = 72 clips. #### 72", True),
    ("5", "\\boxed{6}", False),
    ("\\frac{1}{3}", "0.33", False),
    ("2", "I do not know", False),
]


@pytest.mark.parametrize("gold,generation,expected", MATH_TABLE)
def test_math_checker_agrees_with_math_verify(gold, generation, expected):
    from math_verify import parse, verify

    reference = verify(parse(math_gold(gold)), parse(generation))   # math-verify's own verdict
    assert math_equal(generation, gold) == reference == expected


def test_accuracy_checker_option_and_manifest_details():
    from opd_dynamics.lab.models import ModelSpec, build_model

    tok = char_tokenizer()
    model = build_model(ModelSpec(hidden=16, layers=1, heads=2, intermediate=32), tok, seed=0)
    task = RowsTask([{"prompt": "1+1=", "answer": "2"}], split="test", stop=("\n",), max_new_tokens=3)
    ctx = EvalContext(task, tok, progress=False)
    exact, math = EvalSpec.parse("accuracy").build(ctx), EvalSpec.parse("accuracy:checker=math").build(ctx)
    assert exact.details == {"checker": "exact", "extraction": "last \\boxed{} else the whole generation",
                             "stop": ["\n"], "max_new_tokens": 3}
    assert math.details["checker"] == "math" and "math-verify" in math.details["extraction"]
    assert 0.0 <= exact(model) <= 1.0 and 0.0 <= math(model) <= 1.0
    with pytest.raises(OPDError, match="checker='fuzzy'"):
        EvalSpec.parse("accuracy:checker=fuzzy").build(ctx)


def test_stop_strings_end_generation():
    import torch

    from opd_dynamics.generation import generate
    from opd_dynamics.lab.models import ModelSpec, build_model

    tok = char_tokenizer()
    model = build_model(ModelSpec(hidden=16, layers=1, heads=2, intermediate=32), tok, seed=0)
    free = generate(model, tok, ["ab", "c"], 12, 0.0)
    stop = free.texts[0][2:4]  # a string the greedy continuation of "ab" is known to contain
    cut = generate(model, tok, ["ab", "c"], 12, 0.0, stop=(stop,))
    assert cut.texts[0] == free.texts[0][:free.texts[0].find(stop)]
    assert cut.response_mask[0].sum() < free.response_mask[0].sum() or stop not in free.texts[0]
    assert torch.equal(cut.sequences[:, :cut.prompt_len], free.sequences[:, :free.prompt_len])


def test_a_row_without_the_mapped_columns_is_a_one_line_cli_error(tmp_path, tiny_llama_runs):
    paths = tiny_llama_runs
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "1+1=", "answer": "2"}, {"question": "2+2="}])
    out = tmp_path / "out"
    r = run_cli("interventions", "norm-scaling", paths["run"], "--base", paths["base"], "--task", bad, "-o", out, "-q")
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and "bad.jsonl: row 2 has no answer" in lines[0] and "--answer-column" in lines[0]
    assert not out.exists()
