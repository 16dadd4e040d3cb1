"""tokrl's attention (plain matmuls for decoding and short sequences) against the
softmax formula written out and against transformers' SDPA on a real tiny Llama."""

import copy
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from tokrl.models.attention import MATMUL_MAX_KEYS, attention, use_tokrl_attention


def softmax_attention(q, k, v, mask):
    """The definition, one head at a time: q (B, H, Q, D), k and v (B, KV, S, D), mask (B, 1, Q, S)."""
    B, H, Q, D = q.shape
    group = H // k.shape[1]
    out = torch.zeros(B, Q, H, D)
    for b in range(B):
        for h in range(H):
            kv = h // group                                    # query head h reads key/value head h // G
            scores = q[b, h] @ k[b, kv].T / math.sqrt(D)       # (Q, S)
            scores = scores.masked_fill(~mask[b, 0], float("-inf"))
            out[b, :, h] = torch.softmax(scores, dim=-1) @ v[b, kv]
    return out


@pytest.mark.parametrize("Q,S", [(1, 5), (3, 5), (4, MATMUL_MAX_KEYS + 8)])
def test_matches_the_softmax_formula(Q, S):
    torch.manual_seed(0)
    B, H, KV, D = 2, 4, 2, 8
    q, k, v = torch.randn(B, H, Q, D), torch.randn(B, KV, S, D), torch.randn(B, KV, S, D)
    mask = torch.rand(B, 1, Q, S) > 0.3
    mask[..., 0] = True                                        # every query sees at least one key
    out, weights = attention(None, q, k, v, mask, scaling=None)
    assert weights is None
    assert out.shape == (B, Q, H, D)
    assert torch.allclose(out, softmax_attention(q, k, v, mask), atol=1e-5)


def test_a_query_that_sees_no_key_stays_finite_and_passes_no_nan_to_gradients():
    # a left-padding position attends nowhere: the formula is 0/0 there
    q = torch.randn(1, 2, 2, 4, requires_grad=True)
    k, v = torch.randn(1, 1, 3, 4, requires_grad=True), torch.randn(1, 1, 3, 4, requires_grad=True)
    mask = torch.tensor([[[[False, False, False], [True, True, False]]]])
    out, _ = attention(None, q, k, v, mask)
    assert torch.isfinite(out).all()
    out[:, 1].sum().backward()                                 # only the real query's output is used
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.all(q.grad[:, :, 0] == 0)                     # the padding query gets no gradient


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    sdpa = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    mine = copy.deepcopy(sdpa)
    use_tokrl_attention(mine)
    assert mine.config._attn_implementation == "tokrl"
    return sdpa, mine


def test_left_padded_batch_logits_and_gradients_equal_sdpa(models):
    sdpa, mine = models
    ids = torch.randint(3, 40, (3, 12))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :9] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    grads = []
    for model in (sdpa, mine):
        model.zero_grad()
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits      # (3, 12, V)
        logits[mask.bool()].logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        real = logits[mask.bool()]
        if model is sdpa:
            expected = real.detach()
    assert torch.allclose(real, expected, atol=1e-5)
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-5), name


def test_decoding_with_the_cache_equals_sdpa(models):
    sdpa, mine = models
    ids = torch.randint(3, 40, (2, 6))
    outs = [m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                       min_new_tokens=8, output_scores=True, return_dict_in_generate=True, pad_token_id=0)
            for m in (sdpa, mine)]
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for a, b in zip(outs[0].scores, outs[1].scores):
        assert torch.allclose(a, b, atol=1e-5)
