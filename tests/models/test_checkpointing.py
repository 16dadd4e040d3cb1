"""Activation checkpointing on a real tiny Llama: each decoder layer runs again in backward,
only when gradients are recorded, keeps fewer activations, and gives the same gradients."""

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from tokrl.config import ModelConfig
from tokrl.errors import ConfigError
from tokrl.models.checkpointing import decoder_layers, recompute_in_backward
from tokrl.models.load import load_policy

IDS = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16, 17, 18]])     # (2, 8)


@pytest.fixture
def model(tiny_model_dir):
    """A fresh tiny policy as tokrl loads it (its own, so hooks and gradients stay in the test)."""
    return load_policy(ModelConfig(name=str(tiny_model_dir)))[0].eval()


def attention_calls(model) -> list[int]:
    """A counter of the calls of every layer's self-attention (it runs inside the layer's forward)."""
    calls = [0]
    for layer in decoder_layers(model):
        layer.self_attn.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def loss_of(model) -> torch.Tensor:
    return model(input_ids=IDS, use_cache=False).logits.float().square().mean()


def test_the_decoder_layers_are_found_also_under_lora(tiny_model_dir):
    model, _ = load_policy(ModelConfig(name=str(tiny_model_dir)))
    assert [type(m).__name__ for m in decoder_layers(model)] == ["LlamaDecoderLayer"] * 2
    lora, _ = load_policy(ModelConfig(name=str(tiny_model_dir), lora_rank=2))
    assert len(decoder_layers(lora)) == 2


def test_a_model_without_decoder_layers_is_a_config_error():
    with pytest.raises(ConfigError, match="train.activation_checkpointing"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_layers_run_again_in_backward_only_when_gradients_are_recorded(model):
    calls = attention_calls(model)
    with recompute_in_backward(model):
        loss = loss_of(model)
    assert calls[0] == 2                                    # forward: each of the 2 layers once
    loss.backward()                                         # after the context has closed
    assert calls[0] == 4                                    # backward reran both layers
    model.zero_grad(set_to_none=True)
    with recompute_in_backward(model), torch.no_grad():
        loss_of(model)
    assert calls[0] == 6                                    # a no-grad pass: nothing to recompute
    loss_of(model).backward()
    assert calls[0] == 8                                    # outside the context: plain autograd
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))   # restored
    model.zero_grad(set_to_none=True)


def test_disabled_it_changes_nothing(model):
    calls = attention_calls(model)
    with recompute_in_backward(model, enabled=False):
        loss = loss_of(model)
    loss.backward()
    assert calls[0] == 2
    model.zero_grad(set_to_none=True)


def saved_bytes(model, checkpointed: bool) -> tuple[int, torch.Tensor, list[torch.Tensor]]:
    """(bytes of the tensors autograd saves for backward, the loss, the gradients). A checkpointed
    layer's own inputs are held by the checkpoint, not saved through these hooks: not counted."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t), recompute_in_backward(model, checkpointed):
        loss = loss_of(model)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return total[0], loss.detach(), grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fewer_activations_are_kept_and_the_gradients_are_bitwise_the_same(model, dtype):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        kept, loss, grads = saved_bytes(model, checkpointed=False)
        kept_ckpt, loss_ckpt, grads_ckpt = saved_bytes(model, checkpointed=True)
    # the checkpointed layers keep their inputs only; what stays is the embedding, the
    # final norm and the LM head's activations
    assert kept_ckpt < kept / 2
    assert torch.equal(loss, loss_ckpt)
    for g, h in zip(grads, grads_ckpt):
        assert torch.equal(g, h)


def test_a_kv_cache_is_refused(model):
    with recompute_in_backward(model), pytest.raises(RuntimeError, match="use_cache=False"):
        model(input_ids=IDS, use_cache=True)
