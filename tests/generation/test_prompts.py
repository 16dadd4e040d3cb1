"""Prompt encoding: no special tokens added, empty prompts refused."""

import pytest

from tokrl.generation.prompts import encode_batch, encode_prompt


def test_encode_prompt_adds_no_special_tokens(tokenizer):
    ids = encode_prompt(tokenizer, "ab=")
    assert ids == tokenizer.convert_tokens_to_ids(["a", "b", "="])
    assert tokenizer.bos_token_id not in ids


def test_empty_prompt_is_refused(tokenizer):
    with pytest.raises(ValueError, match="empty prompt"):
        encode_batch(tokenizer, [{"prompt": ""}], 1)
