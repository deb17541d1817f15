"""Evaluators against hand-computed scores on a tiny fixed model: unbatched, unpadded, no KV cache."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from opd_dynamics.errors import OPDError, SelectionError
from opd_dynamics.evaluators import EvalContext, EvalSpec, TaskSpec, available
from opd_dynamics.task.protocol import Example

PROMPTS = ["1+2=", "10+20=", "7+5=", "123+4=", "0+0=", "55+66="]


@pytest.fixture(scope="module")
def setup(tiny_llama_runs):
    paths = tiny_llama_runs
    load = lambda p: AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32, attn_implementation="eager").eval()
    return paths, load(paths["base"]), load(paths["teacher"]), PreTrainedTokenizerFast.from_pretrained(str(paths["base"]))


def greedy_by_hand(model, tok, prompt, max_new):
    ids = tok(prompt)["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
    return tok.decode(out, skip_special_tokens=True)


def target_logprobs(model, tok, prompt, target):
    p = tok(prompt)["input_ids"]
    y = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    with torch.no_grad():
        logits = model(torch.tensor([p + y])).logits[0].double()
    return torch.log_softmax(logits[len(p) - 1:-1], -1), torch.tensor(y)  # (R, V), (R,)


class FixedTask:
    """Answers chosen so that exactly the even-numbered examples are right: accuracy must be 0.5."""

    name, max_new_tokens = "fixed", 6

    def __init__(self, exs):
        self.exs = exs

    def examples(self, split):
        return list(self.exs)

    def verify(self, generation, answer):
        return generation == answer


def test_accuracy_matches_hand_decoding(setup):
    _, model, _, tok = setup
    texts = [greedy_by_hand(model, tok, p, FixedTask.max_new_tokens) for p in PROMPTS]
    exs = [Example(p, t if i % 2 == 0 else t + "#wrong", "") for i, (p, t) in enumerate(zip(PROMPTS, texts))]
    ctx = EvalContext(FixedTask(exs), tok, progress=False)
    for bs in (1, 4, 128):  # left padding and batching change nothing
        ev = EvalSpec("accuracy", {"batch_size": bs}).build(ctx)
        assert ev(model) == 0.5
    assert ev.name == "accuracy:batch_size=128" and ev.higher_is_better and ev.bounds == (0.0, 1.0)


def test_the_lab_and_the_evaluator_share_one_accuracy(setup):
    """The reference runs' training-time accuracy is the ``accuracy`` evaluator's computation (greedy, the task's
    verifier): planted half-right answers give 0.5 through both, and the lab's numbers equal hand decoding."""
    from opd_dynamics.evaluators.accuracy import verified_share
    from opd_dynamics.lab.evaluation import Evaluator, greedy_accuracy

    _, model, _, tok = setup
    texts = [greedy_by_hand(model, tok, p, FixedTask.max_new_tokens) for p in PROMPTS]
    exs = [Example(p, t if i % 2 == 0 else t + "#wrong", "") for i, (p, t) in enumerate(zip(PROMPTS, texts))]
    task = FixedTask(exs)
    assert greedy_accuracy(model, tok, task, exs) == 0.5
    assert Evaluator(tok, task, exs, diagnostic_prompts=0)(model) == {"eval_accuracy": 0.5}
    assert EvalSpec("accuracy").build(EvalContext(task, tok, progress=False))(model) == 0.5
    right = [Example(p, t, "") for p, t in zip(PROMPTS, texts)]
    assert greedy_accuracy(model, tok, task, right) == 1.0
    assert verified_share(model, tok, [], task.verify, max_new_tokens=2) == 0.0


def test_sampled_accuracy_is_deterministic(setup):
    _, model, _, tok = setup
    exs = [Example(p, "x", "") for p in PROMPTS]
    ev = EvalSpec("accuracy", {"samples": 3, "seed": 7}).build(EvalContext(FixedTask(exs), tok, progress=False))
    assert ev(model) == ev(model) == 0.0


def test_loglik_matches_hand_computation(setup):
    _, model, _, tok = setup
    exs = [Example(p, "3", f"{i}+{i}={2 * i} #{2 * i}") for i, p in enumerate(PROMPTS)]
    total, count, per = 0.0, 0, []
    for ex in exs:
        logp, y = target_logprobs(model, tok, ex.prompt, ex.solution)
        lp = logp.gather(-1, y[:, None]).squeeze(-1)
        total, count = total + float(lp.sum()), count + len(y)
        per.append(float(lp.mean()))
    ctx = EvalContext(FixedTask(exs), tok, progress=False)
    assert EvalSpec("loglik", {"batch_size": 4}).build(ctx)(model) == pytest.approx(total / count, abs=1e-5)
    assert EvalSpec("loglik", {"reduce": "example"}).build(ctx)(model) == pytest.approx(sum(per) / len(per), abs=1e-5)


@pytest.mark.parametrize("direction", ["reverse", "forward"])
def test_kl_matches_hand_computation(setup, direction):
    paths, model, teacher, tok = setup
    exs = [Example(p, "3", f"{i}+1={i + 1} #{i + 1}") for i, p in enumerate(PROMPTS)]
    total, count = 0.0, 0
    for ex in exs:
        lp, _ = target_logprobs(model, tok, ex.prompt, ex.solution)
        lq, _ = target_logprobs(teacher, tok, ex.prompt, ex.solution)
        a, b = (lp, lq) if direction == "reverse" else (lq, lp)
        total, count = total + float((a.exp() * (a - b)).sum()), count + lp.shape[0]
    ctx = EvalContext(FixedTask(exs), tok, {"teacher": paths["teacher"], "self": paths["base"]}, progress=False)
    ev = EvalSpec("kl", {"direction": direction, "batch_size": 4}).build(ctx)
    assert ev(model) == pytest.approx(-total / count, abs=1e-5) and ev(model) < 0  # −KL: higher is better
    assert EvalSpec("kl", {"reference": "self"}).build(ctx)(model) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(OPDError, match="no reference model 'final'"):
        EvalSpec("kl", {"reference": "final"}).build(ctx)


def test_registry_and_specs(tmp_path):
    assert {"accuracy", "loglik", "kl"} <= set(available())
    with pytest.raises(SelectionError, match="did you mean accuracy"):
        EvalSpec("acuracy").check()
    with pytest.raises(SelectionError, match="does not take settings"):
        EvalSpec("loglik", {"samples": 2}).check()
    spec = EvalSpec.parse("accuracy:samples=8,seed=1,split=validation")
    assert EvalSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    assert spec.label == "accuracy:samples=8,seed=1,split=validation"


def test_task_specs(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) for i in range(20)))
    spec = TaskSpec.parse(str(path), seed=3)
    task = TaskSpec.from_json(spec.to_json()).build()
    assert task.verify("\\boxed{2}", "2") and len(task.examples("test")) == 2
    assert TaskSpec.parse("lab:tiny").build().name == "addition1"
    with pytest.raises(OPDError, match="no lab preset"):
        TaskSpec.parse("lab:huge")
    with pytest.raises(OPDError, match="no such file"):
        TaskSpec.parse(str(tmp_path / "missing.jsonl"))
