"""The practical matmul peak of an update: its own GEMM shapes, each timed alone.

A 2048x2048 product is the machine's best case; SmolLM2's matmuls have K = 576 or
1536 and M = rows x positions, and cannot reach it. This module lists every matrix
product one update makes (forward and backward), times each distinct shape alone in
the update's compute dtype, and sums: the time a perfect update would spend if it
were nothing but these products at the speed they reach alone.

Per ``nn.Linear`` (in -> out) run over M rows (autograd's three products):

  forward     Y  = X W^T      (M, in) x (in, out)        2 M in out
  input grad  dX = dY W       (M, out) x (out, in)       2 M in out
  weight grad dW = dY^T X     (out, M) x (M, in)         2 M in out   (trainable weights only)

Attention per layer (N * heads batched products of one sequence of S positions,
head dim d): scores Q K^T and values P V forward, two products each backward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Gemm:
    """One kind of product: ``count`` times a (b?, m, k) x (k, n) product, named."""

    name: str
    m: int
    k: int
    n: int
    count: int
    batch: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n * self.count


def update_gemms(model, rows: int, positions: int, completion: int, trainable: bool = True) -> list[Gemm]:
    """Every matrix product of one forward + backward of ``model`` (a Llama-style causal
    LM) over ``rows`` sequences of ``positions`` positions, with the LM head on the last
    ``completion`` + 1 positions (what tokrl's forward keeps).

    trainable: whether the linear weights get gradients (False under LoRA: the frozen
    base weights skip their weight-gradient product).
    """
    import torch.nn as nn

    c = model.config
    layer = model.model.layers[0]
    M, H = rows * positions, rows * (completion + 1)
    out = []
    for name, mod in layer.named_modules():
        if isinstance(mod, nn.Linear) and "lora" not in name:
            out += linear_gemms(name, M, mod.in_features, mod.out_features, c.num_hidden_layers, trainable)
    out += linear_gemms("lm_head", H, c.hidden_size, c.vocab_size, 1, trainable)
    d = c.hidden_size // c.num_attention_heads
    heads, L, S = rows * c.num_attention_heads, c.num_hidden_layers, positions
    out += [Gemm("attn.scores fwd QK^T", S, d, S, L, heads), Gemm("attn.values fwd PV", S, S, d, L, heads),
            Gemm("attn bwd dQ,dK,dV", S, S, d, 3 * L, heads), Gemm("attn bwd dP", S, d, S, L, heads)]
    return out


def linear_gemms(name: str, m: int, k: int, n: int, count: int, trainable: bool) -> list[Gemm]:
    """The products of an (k -> n) linear layer over m rows, ``count`` such layers."""
    out = [Gemm(f"{name} fwd", m, k, n, count), Gemm(f"{name} bwd dX", m, n, k, count)]
    if trainable:
        out.append(Gemm(f"{name} bwd dW", n, m, k, count))
    return out


def time_gemm(g: Gemm, dtype, min_seconds: float = 0.2) -> float:
    """Seconds of one product of shape ``g`` in ``dtype``, best of a few timed loops, each
    in the form autograd runs it (F.linear forward, dY W, a transposed view dY^T X)."""
    import torch

    if g.batch > 1:
        a, b = torch.randn(g.batch, g.m, g.k, dtype=dtype), torch.randn(g.batch, g.k, g.n, dtype=dtype)
        op = lambda: torch.bmm(a, b)  # noqa: E731
    elif g.name.endswith("dW"):
        a, b = torch.randn(g.k, g.m, dtype=dtype), torch.randn(g.k, g.n, dtype=dtype)   # dY (M, out), X (M, in)
        op = lambda: a.t().mm(b)  # noqa: E731
    elif g.name.endswith("dX"):
        a, b = torch.randn(g.m, g.k, dtype=dtype), torch.randn(g.k, g.n, dtype=dtype)   # dY (M, out), W (out, in)
        op = lambda: a.mm(b)  # noqa: E731
    else:
        a, b = torch.randn(g.m, g.k, dtype=dtype), torch.randn(g.n, g.k, dtype=dtype)
        op = lambda: torch.nn.functional.linear(a, b)  # noqa: E731
    op()
    best = float("inf")
    for _ in range(3):
        n, t0 = 0, time.perf_counter()
        while True:
            op()
            n += 1
            if time.perf_counter() - t0 >= min_seconds / 3:
                break
        best = min(best, (time.perf_counter() - t0) / n)
    return best


def practical_peak(gemms: list[Gemm], dtype, min_seconds: float = 0.2) -> dict:
    """Each product timed alone: per-product seconds and FLOP/s, and the whole update's
    GEMM seconds and FLOP/s (its practical peak)."""
    rows, total_s, total_flops = [], 0.0, 0
    for g in gemms:
        s = time_gemm(g, dtype, min_seconds)
        rows.append({"name": g.name, "shape": [g.batch, g.m, g.k, g.n], "count": g.count,
                     "seconds_each": s, "flops_per_s": g.flops / g.count / s})
        total_s += s * g.count
        total_flops += g.flops
    return {"gemm_seconds": total_s, "gemm_flops": total_flops, "flops_per_s": total_flops / total_s,
            "products": rows}
