"""Attention for CPU decoding and short training sequences: plain matmuls instead of SDPA.

PyTorch's fused CPU attention kernel (SDPA) is slow for one query per sequence, which
is what every decoding step is: bf16, batch 16, 124 keys, SmolLM2's 9 query and 3
key/value heads: 1.04 ms per layer, where two batched matmuls and a softmax take 0.22 ms.
With its backward pass, for training sequences of up to ``MATMUL_MAX_KEYS`` keys, the
matmul form is also faster (10.7 vs 34.6 ms at batch 16, 124 keys; 56 vs 69 ms at 256).
It keeps one (B, H, Q, S) probability tensor per layer for backward, which SDPA does
not: past ``MATMUL_MAX_KEYS`` keys that memory grows as S^2, and SDPA is used.

``load_policy`` selects this implementation by its registered name ``"tokrl"``; a
model loaded by hand can do the same with ``use_tokrl_attention(model)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NAME = "tokrl"
MATMUL_MAX_KEYS = 256
"""longest key sequence (with more than one query) computed with matmuls; above it, SDPA"""


def attention(module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
              dropout: float = 0.0, scaling: float | None = None, **kwargs) -> tuple[Tensor, None]:
    """softmax(q k^T * scaling + mask) v for grouped-query attention, without repeating k and v.

    query: (B, H, Q, D); key, value: (B, KV, S, D) with H a multiple of KV;
    attention_mask: (B, 1, Q, S) bool, True where a query may attend (another mask, or
    dropout, goes to SDPA).
    returns: (B, Q, H, D) and no attention weights, as transformers' attention functions do.
    """
    B, H, Q, D = query.shape
    KV, S = key.shape[1], key.shape[2]
    if (Q > 1 and S > MATMUL_MAX_KEYS) or dropout or attention_mask is None or attention_mask.dtype != torch.bool:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                             scale=scaling, is_causal=attention_mask is None and Q == S > 1,
                                             enable_gqa=H != KV)
        return out.transpose(1, 2).contiguous(), None
    G = H // KV
    scale = D ** -0.5 if scaling is None else scaling
    # the G query heads that share a key/value head become G*Q rows of one matmul
    scores = torch.matmul(query.reshape(B, KV, G * Q, D) * scale, key.transpose(-1, -2))  # (B, KV, G*Q, S)
    # trap: not -inf. A padding query may attend nowhere; an all -inf row has a NaN softmax,
    # and the NaN would reach the weights' gradient through 0 * NaN. The most negative float
    # gives such a row a harmless uniform softmax and every other masked key exactly 0.
    scores = scores.view(B, KV, G, Q, S).masked_fill(~attention_mask.view(B, 1, 1, Q, S),
                                                     torch.finfo(scores.dtype).min)
    # softmax in the scores' dtype: for bf16 it accumulates in float32 inside the kernel, and
    # its bf16 output is the one tensor that backward keeps (for both softmax and matmul)
    probs = scores.softmax(dim=-1).view(B, KV, G * Q, S)
    out = torch.matmul(probs, value)                                                    # (B, KV, G*Q, D)
    return out.view(B, H, Q, D).transpose(1, 2).contiguous(), None


def _mask(*args, **kwargs):
    """transformers' boolean mask, always materialised (never None for 'causal, no padding')."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


def use_tokrl_attention(model) -> None:
    """Register the ``"tokrl"`` attention with transformers and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, _mask)
    model.set_attn_implementation(NAME)
