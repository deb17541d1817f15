"""A character-level tokenizer, built in code as a real ``transformers.PreTrainedTokenizerFast``.

One token per character of a fixed alphabet (printable ASCII by default, so any plain-text task
fits), plus ``<pad>`` (id 0), ``<bos>`` (1), ``<eos>`` (2) and ``<unk>`` (3). Encoding with special
tokens prepends ``<bos>``; decoding joins characters with nothing in between.

Saving writes ``tokenizer.json`` and ``tokenizer_config.json``, so the directory reloads without the
network. Load it with :func:`load_tokenizer` (``PreTrainedTokenizerFast.from_pretrained``). In
transformers 5, ``AutoTokenizer.from_pretrained`` reads ``config.json``'s model type and, for types
it distrusts (qwen2 among them), loads that family's tokenizer class instead — ``Qwen2Tokenizer``
re-splits text with its own byte-level rules and our ids come out wrong. Beside a llama config (the
reference models' default) ``AutoTokenizer`` round-trips; the tests check both.

>>> tok = char_tokenizer()
>>> ids = tok("12+3=")["input_ids"]
>>> ids[0] == tok.bos_token_id, len(ids)
(True, 6)
>>> tok.decode(ids, skip_special_tokens=True)
'12+3='
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
DEFAULT_ALPHABET = "".join(c for c in string.printable if c not in "\t\n\r\x0b\x0c") + "\n"


def char_tokenizer(alphabet: str = DEFAULT_ALPHABET) -> PreTrainedTokenizerFast:
    """A fast tokenizer with one id per character of ``alphabet`` (duplicates dropped, order kept)."""
    chars = list(dict.fromkeys(alphabet))
    vocab = {tok: i for i, tok in enumerate([*SPECIALS, *chars])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # "isolated" splitting on any single character makes every character its own word
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
        unk_token="<unk>", padding_side="left", clean_up_tokenization_spaces=False)


#: a chat template for the character tokenizer: each turn as ``<u>``/``<a>`` (the role's first letter) + content + a
#: newline; the generation prompt is ``<a>``. One token per character, so a chat model fits a tiny vocabulary.
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<a>{% endif %}")


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """:func:`char_tokenizer` with :data:`CHAT_TEMPLATE` (the chat runs of the tests and ``bench/trl_runs.py``).

    >>> chat_tokenizer().apply_chat_template([{"role": "user", "content": "1+2="}], tokenize=False,
    ...                                      add_generation_prompt=True)
    '<u>1+2=\\n<a>'
    """
    tok = char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a saved character tokenizer (never through ``AutoTokenizer``; see the module docstring)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path))
