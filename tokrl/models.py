"""Load the policy and its tokenizer; the value head that turns the policy into an actor-critic."""

from __future__ import annotations

import copy
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
    autocast dtype of forward passes. Attention is tokrl's (``tokrl.attention``). A
    tokenizer without a pad token pads with EOS: tokrl never reads padding from token
    ids (lengths and masks say where it is).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokrl.attention import use_tokrl_attention
    from tokrl.pretrained import resolve_model

    directory = resolve_model(cfg.name, cfg.cache_dir)
    if not any((directory / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise ValueError(f"{directory} has no tokenizer (tokenizer.json or tokenizer_config.json); "
                         "save one there with tokenizer.save_pretrained")
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load the model in {directory}: {first}") from None
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {directory} has no EOS token; set eos_token in its tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    use_tokrl_attention(model)
    if cfg.lora_rank > 0:
        model = add_lora(model, cfg)
    return model, tokenizer


def add_lora(model, cfg: ModelConfig):
    """Wrap ``model`` with LoRA adapters (peft); only the adapters require grad."""
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_targets if cfg.lora_targets == "all-linear" else [t.strip() for t in cfg.lora_targets.split(",")]
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=targets,
                      task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as e:   # e.g. a target module name the model does not have
        raise ValueError(f"model.lora_targets={cfg.lora_targets!r}: {str(e).splitlines()[0]}") from None


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class Reference:
    """The frozen initial policy that KL is measured against.

    Without LoRA it is a frozen copy of the policy. With LoRA it is the policy itself
    with its adapters disabled: the base weights never change, so no copy is needed.
    """

    def __init__(self, policy: nn.Module):
        self.shared = is_lora(policy)
        self.model = policy if self.shared else copy.deepcopy(policy).requires_grad_(False)

    def disabled_adapters(self):
        """The context in which ``self.model`` computes the reference distribution."""
        return self.model.disable_adapter() if self.shared else nullcontext()


def autocast(dtype: str):
    """The forward-pass context for ``dtype`` on CPU: bf16 autocast, or nothing for fp32."""
    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def save_policy(model, tokenizer, directory: str | Path) -> None:
    """Hugging Face format (safetensors), loadable with ``AutoModelForCausalLM.from_pretrained``.

    LoRA adapters are merged into a copy of the weights first, so the export is a plain
    model that needs no peft; the training model keeps its adapters.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if is_lora(model):
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
