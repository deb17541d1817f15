"""Rollouts: padding never changes what a model computes; sampling is reproducible from a generator."""

import torch

from opd_dynamics.lab import ModelSpec, build_model, char_tokenizer, generate, response_logits
from opd_dynamics.generation import pair_rollout

PROMPTS = ["1+2=", "100+200=", "5"]


def model_and_tokenizer():
    tok = char_tokenizer()
    return build_model(ModelSpec(hidden=32, layers=2, heads=2, intermediate=64), tok, 0), tok


def test_left_padding_changes_nothing():
    model, tok = model_and_tokenizer()
    r = generate(model, tok, PROMPTS, 12, generator=torch.Generator().manual_seed(0))
    batched = response_logits(model, r)
    for i in range(len(PROMPTS)):
        real = r.attention_mask[i].bool()
        seq = r.sequences[i][real][None]  # the row without its padding
        n_prompt = int(r.attention_mask[i, :r.prompt_len].sum())
        alone = model(input_ids=seq).logits[0, n_prompt - 1:-1]
        n = int(r.response_mask[i].sum())
        assert torch.allclose(batched[i, :n], alone[:n], atol=1e-5)


def test_greedy_is_argmax_of_teacher_forced_logits():
    model, tok = model_and_tokenizer()
    r = generate(model, tok, PROMPTS, 12, temperature=0.0)
    picks = response_logits(model, r).argmax(-1)
    assert torch.equal(picks[r.response_mask.bool()], r.responses[r.response_mask.bool()])


def test_sampling_is_reproducible_from_the_generator():
    model, tok = model_and_tokenizer()
    a = generate(model, tok, PROMPTS, 12, generator=torch.Generator().manual_seed(7))
    b = generate(model, tok, PROMPTS, 12, generator=torch.Generator().manual_seed(7))
    c = generate(model, tok, PROMPTS, 12, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.sequences, b.sequences) and a.texts == b.texts
    assert not torch.equal(a.sequences, c.sequences)


def test_response_mask_stops_after_eos_and_pairs_append_it():
    _, tok = model_and_tokenizer()
    r = pair_rollout(tok, ["1+2=", "10+20="], ["3", "30 #30"])
    assert r.response_mask.sum(1).tolist() == [2, 7]
    assert r.responses[0, 1] == tok.eos_token_id and r.responses[0, 2] == tok.pad_token_id
    assert tok.decode(r.sequences[1], skip_special_tokens=True) == "10+20=30 #30"
