"""The forward passes tokrl makes: the teacher-forced pass that the update, the reference
and the critic share, and the cached decoding steps of tokrl's engine.

The rollout records log-probs while it samples; the update recomputes them (with
gradients) by running the policy once over prompt + completion. Both use the
same positions and attention mask, and the same autocast dtype.
"""

from __future__ import annotations

import inspect
from contextlib import nullcontext
from functools import lru_cache

import torch
from torch import Tensor

from tokrl.models.heads import ValueHead
from tokrl.types import Rollout


def autocast(dtype: str, device: torch.device | str = "cpu"):
    """The forward-pass context for ``dtype`` on ``device``: bf16 autocast, or nothing for fp32."""
    if dtype == "bfloat16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def device_of(model) -> torch.device:
    """The device of ``model``'s first parameter (where its inputs must be)."""
    return next(model.parameters()).device


@lru_cache(maxsize=1)
def cache_argument() -> str:
    """The name transformers gives the KV cache argument and output field: ``cache`` from
    5.2x on, ``past_key_values`` before (tokrl supports transformers 5.17 and newer)."""
    from transformers import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


def decode(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, cache=None,
           logits_to_keep: int | None = None) -> tuple[Tensor, object]:
    """One cached forward pass: (logits of the last position (N, V), the updated cache).

    input_ids, position_ids: (N, S) for S new positions; attention_mask: (N, past + S);
    cache: the cache of the positions before (None: a prefill that starts one).
    """
    extra = {} if logits_to_keep is None else {"logits_to_keep": logits_to_keep}
    if cache is not None:
        extra[cache_argument()] = cache
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                **extra)
    return out.logits[:, -1], getattr(out, cache_argument())


def forward(model, head: ValueHead | None, batch: Rollout, dtype: str) -> tuple[Tensor, Tensor | None]:
    """Teacher-forced pass over prompt + completion.

    batch may live on the CPU; its ids go to the model's device, and the results stay there.
    returns logits (N, T, V) at the positions that choose each completion token,
    and values (N, T) float32 from the value head (None without one).
    """
    device = device_of(model)
    T = batch.tokens.shape[1]
    attention = batch.attention_mask().to(device)                        # (N, P+T)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    with autocast(dtype, device):
        # position P-1+t chooses token t: keep the last T+1 positions, drop the final one
        # no KV cache: nothing decodes after this pass, and a layer recomputed in backward
        # (train.activation_checkpointing) would write its keys and values into it twice
        out = model(input_ids=batch.input_ids().to(device), attention_mask=attention, position_ids=positions,
                    logits_to_keep=T + 1, output_hidden_states=head is not None, use_cache=False)
    logits = out.logits[:, :-1]                                          # (N, T, V)
    values = None
    if head is not None:
        values = head(out.hidden_states[-1][:, -T - 1:-1])               # (N, T)
    return logits, values
