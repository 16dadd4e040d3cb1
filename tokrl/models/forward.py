"""The teacher-forced forward pass that the update, the reference and the critic share.

The rollout records log-probs while it samples; the update recomputes them (with
gradients) by running the policy once over prompt + completion. Both use the
same positions and attention mask, and the same autocast dtype.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from tokrl.models.heads import ValueHead
from tokrl.types import Rollout


def autocast(dtype: str):
    """The forward-pass context for ``dtype`` on CPU: bf16 autocast, or nothing for fp32."""
    if dtype == "bfloat16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def forward(model, head: ValueHead | None, batch: Rollout, dtype: str) -> tuple[Tensor, Tensor | None]:
    """Teacher-forced pass over prompt + completion.

    returns logits (N, T, V) at the positions that choose each completion token,
    and values (N, T) float32 from the value head (None without one).
    """
    T = batch.tokens.shape[1]
    attention = batch.attention_mask()                                   # (N, P+T)
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    with autocast(dtype):
        # position P-1+t chooses token t: keep the last T+1 positions, drop the final one
        out = model(input_ids=batch.input_ids(), attention_mask=attention, position_ids=positions,
                    logits_to_keep=T + 1, output_hidden_states=head is not None)
    logits = out.logits[:, :-1]                                          # (N, T, V)
    values = None
    if head is not None:
        values = head(out.hidden_states[-1][:, -T - 1:-1])               # (N, T)
    return logits, values
