"""Activation checkpointing: the update's forward pass keeps each decoder layer's input
only, and backward recomputes the layer's inside from it.

Without it, backward needs every activation saved by every layer (norms, q/k/v, the
attention probabilities, the MLP's gate and up projections): about L layers of them
at once. With it, the forward pass saves one (N, S, H) hidden state per layer, and
backward rebuilds one layer's activations at a time, at the cost of a second forward
pass through the trunk.

tokrl applies it per decoder layer with ``torch.utils.checkpoint`` (non-reentrant)
rather than transformers' ``gradient_checkpointing_enable``: transformers checkpoints a
layer only while the model is in training mode, and tokrl keeps the policy in eval mode
for good (dropout off, so the rollout and the update see the same policy); it would
also turn off the KV cache of tokrl's engine and hook the embeddings to require grad
on every pass. Here the switch is a context around the update's forward pass alone:
rollout, reference and critic passes under ``no_grad`` are untouched.

The recomputed forward is the same computation on the same inputs (autocast state
and RNG state are restored by ``torch.utils.checkpoint``), so losses and gradients do
not change: on the CPU they are bitwise equal (tests/models/test_checkpointing.py).
Module hooks stay outside the recomputed function, so FSDP2's per-layer unshard and
reshard hooks run once in forward and once before the layer's backward, as
torchtitan arranges them.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tokrl.errors import ConfigError


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of ``model`` (a transformers model, under LoRA or FSDP too): the
    modules transformers marks as checkpointable (``GradientCheckpointingLayer``), outermost
    ones only. Raises ConfigError when it has none."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    inner = {id(c) for m in layers for c in m.modules() if c is not m}
    layers = [m for m in layers if id(m) not in inner]
    if not layers:
        raise ConfigError(f"train.activation_checkpointing: {type(model).__name__} has no decoder layers that "
                          "transformers marks as checkpointable (GradientCheckpointingLayer); set it to false")
    return layers


def _checkpointed(forward, *args, **kwargs):
    """``forward(*args, **kwargs)`` saving only its inputs for backward, which reruns it."""
    from transformers.cache_utils import Cache

    if any(isinstance(v, Cache) for v in kwargs.values()):
        # the rerun would append this layer's keys and values to the cache a second time
        raise RuntimeError("a decoder layer recomputed in backward was given a KV cache; "
                           "call the model with use_cache=False")
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextmanager
def recompute_in_backward(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within this context, each forward pass of ``model``'s decoder layers that records
    gradients saves the layer's inputs only, and backward recomputes the layer.

    Nothing changes when ``enabled`` is false or gradients are off (``torch.no_grad``).
    Backward may run after the context has closed: the recomputation holds the original
    forward, not the context.
    """
    if not enabled or not torch.is_grad_enabled():
        yield
        return
    layers = decoder_layers(model)
    own = [layer.__dict__.get("forward") for layer in layers]      # a forward set on the instance, if any
    for layer, forward in zip(layers, own):
        original = forward if forward is not None else type(layer).forward.__get__(layer)
        # hooks run in Module.__call__, outside forward: FSDP's unshard/reshard are not recomputed
        layer.forward = partial(_checkpointed, original)
    try:
        yield
    finally:
        for layer, forward in zip(layers, own):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
