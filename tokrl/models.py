"""Load the policy and its tokenizer; the value head that turns the policy into an actor-critic."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor, nn

from tokrl.config import ModelConfig


class ValueHead(nn.Module):
    """V(s_t) from the policy trunk's last hidden state: one linear layer, zero-initialised
    so the first baseline is 0 and the first update is plain REINFORCE."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (N, T, H) -> (N, T) float32."""
        return self.linear(hidden.float()).squeeze(-1)


def load_policy(cfg: ModelConfig):
    """(model, tokenizer) from ``cfg.name``: a directory, a .gguf file or a built-in name.

    Weights are float32 (the master copy Adam updates); ``cfg.dtype`` only sets the
    autocast dtype of forward passes. A tokenizer without a pad token pads with EOS:
    tokrl never reads padding from token ids (lengths and masks say where it is).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokrl.pretrained import resolve_model

    directory = resolve_model(cfg.name, cfg.cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {directory} has no EOS token; set eos_token in its tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def autocast(dtype: str):
    """The forward-pass context for ``dtype`` on CPU: bf16 autocast, or nothing for fp32."""
    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def save_policy(model, tokenizer, directory: str | Path) -> None:
    """Hugging Face format (safetensors), loadable with ``AutoModelForCausalLM.from_pretrained``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
