"""Load the policy and its tokenizer (a directory, a .gguf file or a built-in name),
add LoRA adapters, and save it back in Hugging Face format."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from tokrl.config import ModelConfig


def resolve_device(name: str) -> torch.device:
    """``model.device`` as a torch device: auto is cuda when a GPU is visible, else cpu.
    Under torchrun each process uses the GPU ``tokrl.training.distributed.init`` chose."""
    cuda = torch.cuda.is_available()
    if name == "cuda" and not cuda:
        raise ValueError("model.device=cuda but torch sees no CUDA GPU (torch.cuda.is_available() is false); "
                         "use model.device=cpu or auto")
    if name == "cpu" or not cuda:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def load_policy(cfg: ModelConfig):
    """(model, tokenizer) from ``cfg.name``: a directory, a .gguf file or a built-in name.

    Weights are float32 (the master copy Adam updates) on ``cfg.device``; ``cfg.dtype``
    only sets the autocast dtype of forward passes. Attention is tokrl's matmul attention
    on the CPU (``models.attention``) and PyTorch's fused SDPA kernels on a GPU. A
    tokenizer without a pad token pads with EOS: tokrl never reads padding from token
    ids (lengths and masks say where it is).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tokrl.models.attention import use_tokrl_attention
    from tokrl.models.pretrained import resolve_model

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
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        use_tokrl_attention(model)
    else:
        model.set_attn_implementation("sdpa")
        model.to(device)
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
