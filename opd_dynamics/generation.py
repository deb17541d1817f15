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


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                   add_special_tokens: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask. Chat-rendered prompts pass ``add_special_tokens=False``: the chat template writes
    its own special tokens (as ``apply_chat_template(tokenize=True)`` and TRL's trainers encode them)."""
    # padded by hand: asking the fast tokenizer to pad switches padding on in its backend for good,
    # and every tokenizer.json saved afterwards would differ
    return left_pad(tokenizer(prompts, add_special_tokens=add_special_tokens)["input_ids"], tokenizer.pad_token_id)


def _stopped(tokenizer, tokens: list[torch.Tensor], rows: torch.Tensor, stop: tuple[str, ...], window: int) -> torch.Tensor:
    """Which of ``rows`` (bool (B,)) now end with text containing a stop string (the last ``window`` tokens)."""
    idx = rows.nonzero().flatten().tolist()
    hit = torch.zeros_like(rows)
    if not idx:
        return hit
    tail = torch.stack(tokens[-window:], 1)[idx].cpu()
    for i, text in zip(idx, tokenizer.batch_decode(tail, skip_special_tokens=True)):
        hit[i] = any(s in text for s in stop)
    return hit


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to (not including) the first stop string."""
    ends = [text.find(s) for s in stop if s in text]
    return text[:min(ends)] if ends else text


@torch.no_grad()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
             max_new_tokens: int, temperature: float = 1.0,
             generator: torch.Generator | None = None, stop: tuple[str, ...] = (),
             add_special_tokens: bool = True) -> Rollout:
    """Continue each prompt until ``<eos>``, a ``stop`` string or ``max_new_tokens``; greedy when ``temperature == 0``.

    Runs on the model's device (sampling draws on the CPU from ``generator``, so CPU and CUDA sample alike given the
    same logits). Texts are cut before the first stop string; the returned tokens keep what was generated.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, add_special_tokens)
    ids, mask = prompt_ids.to(device), prompt_mask.to(device)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    window = max((len(s) for s in stop), default=0) + 4
    was_training = model.training
    model.eval()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1].float()
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    new_tokens, new_mask = [], []
    for _ in range(max_new_tokens):
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1).cpu()
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(device)
        token = torch.where(done, torch.full_like(token, pad), token)
        new_tokens.append(token)
        new_mask.append((~done).long())
        done = done | (token == eos)
        if stop:
            done = done | _stopped(tokenizer, new_tokens, ~done, stop, window)
        if bool(done.all()):
            break
        mask = torch.cat([mask, new_mask[-1][:, None]], dim=1)
        out = model(input_ids=token[:, None], attention_mask=mask,
                    position_ids=positions(mask)[:, -1:], past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
    model.train(was_training)
    responses, response_mask = torch.stack(new_tokens, 1).cpu(), torch.stack(new_mask, 1).cpu()
    texts = tokenizer.batch_decode(responses, skip_special_tokens=True)
    if stop:
        texts = [cut_at_stop(t, stop) for t in texts]
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


def pair_rollout(tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str],
                 add_special_tokens: bool = True) -> Rollout:
    """A rollout from given texts (the SFT case): each response gets an ``<eos>`` appended."""
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, add_special_tokens)
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
