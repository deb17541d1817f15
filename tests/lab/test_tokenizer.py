"""The character tokenizer: round trips, specials, saving, and what AutoTokenizer does with it."""

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from opd_dynamics.lab import ModelSpec, build_model, char_tokenizer, load_tokenizer

TEXT = "047+285=7+5+0=12 4+8+1=13 #332 \\boxed{x}"


def test_one_token_per_character_and_round_trip():
    tok = char_tokenizer()
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok("ab")["input_ids"][0] == tok.bos_token_id
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_batches_are_left_padded():
    enc = char_tokenizer()(["1", "123"], padding=True)
    assert enc["input_ids"][0][:2] == [0, 0] and enc["attention_mask"][0] == [0, 0, 1, 1]


def test_saved_tokenizer_reloads(tmp_path):
    tok = char_tokenizer()
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert isinstance(again, PreTrainedTokenizerFast)
    assert again(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert again.padding_side == "left" and again.eos_token == "<eos>"


@pytest.mark.parametrize("arch", [
    "llama",
    # transformers 5 forces Qwen2Tokenizer for model_type qwen2 (MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS):
    # the trap this test documents; load_tokenizer() is the loader that works for both
    pytest.param("qwen2", marks=pytest.mark.xfail(reason="AutoTokenizer swaps in Qwen2Tokenizer", strict=False)),
])
def test_auto_tokenizer_in_a_model_directory(tmp_path, arch):
    """Beside a llama config.json, AutoTokenizer gives back our tokenizer."""
    tok = char_tokenizer()
    build_model(ModelSpec(hidden=16, layers=1, heads=2, intermediate=16, arch=arch), tok, 0).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    auto = AutoTokenizer.from_pretrained(tmp_path)
    assert auto(TEXT)["input_ids"] == tok(TEXT)["input_ids"]
    assert auto.decode(tok(TEXT)["input_ids"], skip_special_tokens=True) == TEXT
    assert len(auto) == len(tok)
