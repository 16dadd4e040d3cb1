"""Tiny random models and a character tokenizer, built locally (no downloads).

They make tests and the laptop demo real without a model hub: a genuine Hugging
Face Llama architecture and a genuine ``tokenizers`` tokenizer, saved to and loaded
from a directory like any other model.
"""

from __future__ import annotations

from pathlib import Path

import torch

SPECIALS = ["<pad>", "<eos>", "<bos>"]
CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 =:>+-*?.,"


def make_tokenizer(chars: str = CHARS):
    """A character-level fast tokenizer: one token per character, pad/eos/bos specials."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                   eos_token="<eos>", bos_token="<bos>")


def make_tiny_model(directory: str | Path, hidden: int = 64, layers: int = 2, heads: int = 2,
                    seed: int = 0, chars: str = CHARS) -> Path:
    """Write a randomly initialised tiny Llama and its tokenizer to ``directory``.

    The default (64 hidden, 2 query heads sharing 1 key/value head) has head_dim 32, the
    smallest vLLM's CPU attention serves, so every tiny recipe runs on both engines.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tokenizer = make_tokenizer(chars)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
