"""Sampling: temperature, top-k and top-p by hand, and the per-row seeded noise that
makes one process and W processes draw the same samples."""

import torch

from tokrl.config import SamplingConfig
from tokrl.generation.sampling import inverse_cdf, process_logits, sample_seeds


def test_process_logits_temperature_topk_topp_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # temperature 2 halves the logits
    z = process_logits(logits, SamplingConfig(temperature=2.0))
    assert torch.allclose(z, logits / 2)
    # top-k 2 keeps the two largest
    z = process_logits(logits, SamplingConfig(top_k=2))
    assert torch.isfinite(z[0, :2]).all() and torch.isinf(z[0, 2:]).all()
    # top-p 0.7: mass above each token is 0, 0.5, 0.8, 0.95 -> keep tokens 0 and 1
    z = process_logits(logits, SamplingConfig(top_p=0.7))
    assert torch.isfinite(z[0, :2]).all() and torch.isinf(z[0, 2:]).all()
    # top-p 0.4 still keeps the most likely token
    z = process_logits(logits, SamplingConfig(top_p=0.4))
    assert torch.isfinite(z[0, 0]) and torch.isinf(z[0, 1:]).all()
    # the kept set renormalises: 0.5 / 0.8 and 0.3 / 0.8
    p = torch.softmax(process_logits(logits, SamplingConfig(top_p=0.7)), dim=-1)
    assert torch.allclose(p[0, :2], torch.tensor([0.625, 0.375]))


def test_inverse_cdf_follows_the_probabilities_and_never_draws_a_zero():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]])                # zeros inside and at both ends
    u = (torch.arange(100_000, dtype=torch.float64) + 0.5) / 100_000       # an even grid over [0, 1)
    tokens = inverse_cdf(probs.expand(len(u), -1), u)
    freq = torch.bincount(tokens, minlength=6).double() / len(u)
    assert torch.allclose(freq, probs[0].double(), atol=1e-4)
    # the edges: u = 0 and the largest float64 below 1 land on tokens that have mass
    edges = inverse_cdf(probs.expand(2, -1), torch.tensor([0.0, 1.0 - 2**-53], dtype=torch.float64))
    assert edges.tolist() == [1, 4]
    # unnormalised mass works the same (the sampler divides by the total)
    assert inverse_cdf(torch.tensor([[2.0, 0.0, 6.0]]), torch.tensor([0.3], dtype=torch.float64)).item() == 2


def test_row_seeds_are_keyed_to_seed_step_prompt_and_sample():
    seeds = sample_seeds(0, 5, 0, 4, 2)                                    # 4 prompts x 2 samples
    assert seeds.shape == (8,) and len(set(seeds.tolist())) == 8 and (seeds >= 0).all()
    assert torch.equal(sample_seeds(0, 5, 2, 2, 2), seeds[4:])             # prompts 2 and 3 alone
    assert not torch.equal(sample_seeds(1, 5, 0, 4, 2), seeds)             # another run seed
    assert not torch.equal(sample_seeds(0, 6, 0, 4, 2), seeds)             # another step
