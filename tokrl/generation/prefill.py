"""The start that tokrl's decoding loops share (one turn: ``engine.generate``; many:
``multiturn.run_episodes``): each row's noise, the attention and positions of prompt plus
completion, and the prefill that encodes each group's prompt once."""

from __future__ import annotations

import torch
from torch import Tensor

from tokrl.generation.sampling import row_uniforms
from tokrl.models.forward import decode


def row_noise(sampling, seeds: Tensor | None, n: int, steps: int, generator: torch.Generator | None,
              device) -> Tensor | None:
    """(n, steps) float64 uniforms, row i's from seeds[i] (drawn from ``generator`` when None);
    None when greedy."""
    if sampling.temperature <= 0:
        return None
    seeds = torch.randint(0, 2**62, (n,), generator=generator) if seeds is None else seeds
    return row_uniforms(seeds, steps).to(device)


def prefill(model, prompt_ids: Tensor, prompt_mask: Tensor, group_size: int, steps: int
            ) -> tuple[Tensor, object, Tensor, Tensor]:
    """Encode the prompts (rows g*G .. g*G+G-1 share one, encoded once), run inside the caller's
    autocast. prompt_ids, prompt_mask: (N, P) left-padded, on the model's device.

    returns the logits of each row's next token (N, V), the cache (N rows), the attention mask
    of prompt plus ``steps`` completion positions (N, P + steps) and the next position (N, 1).
    """
    G, (N, P) = group_size, prompt_ids.shape
    attention = torch.cat([prompt_mask, torch.ones(N, steps, dtype=prompt_mask.dtype, device=prompt_ids.device)],
                          dim=1)
    positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)              # (N, P)
    logits, cache = decode(model, prompt_ids[::G], attention[::G, :P], positions[::G], logits_to_keep=1)
    if G > 1:
        cache.batch_repeat_interleave(G)                                   # each prompt's cache, G times
    return logits.repeat_interleave(G, dim=0), cache, attention, positions[:, -1:] + 1
