"""The KL reference: with LoRA the policy itself with its adapters off; with full
fine-tuning a frozen copy."""

import torch

from tokrl.config import ModelConfig
from tokrl.models.load import is_lora, load_policy
from tokrl.models.reference import Reference


def test_lora_trains_adapters_only_and_its_reference_is_the_base(tiny_model_dir):
    model, _ = load_policy(ModelConfig(name=str(tiny_model_dir), lora_rank=2, lora_targets="q_proj,v_proj"))
    assert is_lora(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ("q_proj" in n or "v_proj" in n) for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.add_(0.5)                      # move the adapters away from their zero start
    ref = Reference(model)
    assert ref.model is model                    # no second copy in memory
    base, _ = load_policy(ModelConfig(name=str(tiny_model_dir)))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad(), ref.disabled_adapters():
        assert torch.allclose(ref.model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-3)


def test_full_finetuning_reference_is_a_frozen_copy(tiny_model_dir):
    model, _ = load_policy(ModelConfig(name=str(tiny_model_dir)))
    ref = Reference(model)
    assert ref.model is not model and not any(p.requires_grad for p in ref.model.parameters())
