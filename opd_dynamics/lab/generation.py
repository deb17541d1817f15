"""Rollouts: sample or greedily decode responses, and score them again with any model.

A :class:`Rollout` holds ``B`` prompt+response sequences laid out as

    [pad … pad  <bos> prompt | response … <eos> pad … pad]
     <----- P (left-padded) -->|<---------- R ------------->

so every response starts at column ``P``. ``response_mask`` (B, R) is 1 on response tokens up to
and including ``<eos>``. Positions are counted from each row's first real token
(``position_ids = cumsum(attention_mask) − 1``), so padding never shifts what a model sees.

Sampling draws from softmax(logits / temperature) with ``torch.multinomial`` on an explicit
``torch.Generator``; temperature 0 is greedy. Same generator state, same rollout, bit for bit.

>>> from opd_dynamics.lab.tokenizer import char_tokenizer
>>> from opd_dynamics.lab.models import ModelSpec, build_model
>>> tok = char_tokenizer()
>>> m = build_model(ModelSpec(hidden=32, layers=2, heads=2, intermediate=64), tok, seed=0)
>>> r = generate(m, tok, ["1+2=", "10+20="], max_new_tokens=5, generator=torch.Generator().manual_seed(0))
>>> r.sequences.shape[0], r.response_mask.shape[1] <= 5, len(r.texts)
(2, True, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class Rollout:
    sequences: torch.Tensor       # (B, P + R) token ids
    attention_mask: torch.Tensor  # (B, P + R) 1 on real tokens
    prompt_len: int               # P
    response_mask: torch.Tensor   # (B, R) 1 on response tokens (eos included)
    texts: list[str]              # decoded responses, special tokens dropped

    @property
    def responses(self) -> torch.Tensor:  # (B, R)
        return self.sequences[:, self.prompt_len:]


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids, attention_mask), both (B, max_len), padded on the left."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    # padded by hand: asking the fast tokenizer to pad switches padding on in its backend for good,
    # and every tokenizer.json saved afterwards would differ
    return left_pad(tokenizer(prompts)["input_ids"], tokenizer.pad_token_id)


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
             max_new_tokens: int, temperature: float = 1.0,
             generator: torch.Generator | None = None) -> Rollout:
    """Continue each prompt until ``<eos>`` or ``max_new_tokens``; greedy when ``temperature == 0``."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    ids, mask = prompt_ids, prompt_mask
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    was_training = model.training
    model.eval()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1].float()
    done = torch.zeros(len(prompts), dtype=torch.bool)
    new_tokens, new_mask = [], []
    for _ in range(max_new_tokens):
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        new_tokens.append(token)
        new_mask.append((~done).long())
        done = done | (token == eos)
        if bool(done.all()):
            break
        mask = torch.cat([mask, new_mask[-1][:, None]], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask,
                    position_ids=positions(mask)[:, -1:], past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
    model.train(was_training)
    responses, response_mask = torch.stack(new_tokens, 1), torch.stack(new_mask, 1)
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    return Rollout(torch.cat([prompt_ids, responses], 1), torch.cat([prompt_mask, response_mask], 1),
                   prompt_ids.shape[1], response_mask, texts)


def response_logits(model: PreTrainedModel, rollout: Rollout) -> torch.Tensor:
    """Logits (B, R, V) that ``model`` gives each response token, from one teacher-forced pass.

    Row t predicts response token t, so it is the model's output at column P − 1 + t.
    Gradients flow when called outside ``torch.no_grad``.
    """
    out = model(input_ids=rollout.sequences, attention_mask=rollout.attention_mask,
                position_ids=positions(rollout.attention_mask), use_cache=False)
    p = rollout.prompt_len
    return out.logits[:, p - 1:-1].float()


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] for each position: (B, R, V), (B, R) -> (B, R)."""
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)


def pair_rollout(tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str]) -> Rollout:
    """A rollout from given texts (the SFT case): each response gets an ``<eos>`` appended."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    resp = [tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for r in responses]
    width = max(len(r) for r in resp)
    tokens = torch.full((len(resp), width), tokenizer.pad_token_id, dtype=torch.long)
    rmask = torch.zeros((len(resp), width), dtype=torch.long)
    for i, r in enumerate(resp):
        tokens[i, :len(r)] = torch.tensor(r)
        rmask[i, :len(r)] = 1
    return Rollout(torch.cat([prompt_ids, tokens], 1), torch.cat([prompt_mask, rmask], 1),
                   prompt_ids.shape[1], rmask, list(responses))
