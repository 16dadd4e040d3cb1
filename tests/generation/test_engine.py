"""tokrl's KV-cache decoding loop on a real tiny Llama: log-probs and entropies against a
teacher-forced recomputation, one forward pass per token, a group's shared prefill."""

import math

import pytest
import torch

from tokrl.config import SamplingConfig
from tokrl.generation.engine import generate
from tokrl.generation.prompts import encode_batch
from tokrl.generation.sampling import process_logits, sample_seeds
from tokrl.losses import entropy as full_entropy


@pytest.mark.parametrize("sampling", [SamplingConfig(8, 1.0), SamplingConfig(8, 0.7, top_k=10),
                                      SamplingConfig(8, 1.3, top_p=0.9), SamplingConfig(8, 0.0)])
def test_logprobs_and_entropy_match_teacher_forcing(policy, sampling):
    model, tokenizer = policy
    examples = [{"prompt": p} for p in ("ab=", "abcd=", "a")]
    ids, mask = encode_batch(tokenizer, examples, group_size=2)
    out = generate(model, ids, mask, sampling, tokenizer.eos_token_id, tokenizer.pad_token_id,
                   generator=torch.Generator().manual_seed(0))
    T = out["tokens"].shape[1]
    completion_mask = torch.arange(T)[None, :] < out["lengths"][:, None]
    attention = torch.cat([mask, completion_mask.long()], dim=1)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([ids, out["tokens"]], 1), attention_mask=attention,
                       position_ids=positions).logits[:, ids.shape[1] - 1:-1]          # (N, T, V)
    logp = torch.log_softmax(process_logits(logits, sampling), -1).gather(-1, out["tokens"][..., None])[..., 0]
    # where, not a product: a padding token outside the top-k has log-prob -inf, and -inf * 0 is NaN
    def real(x):
        return torch.where(completion_mask, x, 0.0)

    assert torch.allclose(real(out["logprobs"]), real(logp), atol=1e-4)
    tempered = logits / sampling.temperature if sampling.temperature > 0 else logits
    assert torch.allclose(real(out["entropy"]), real(full_entropy(tempered)), atol=1e-4)


def test_one_forward_per_token_with_kv_cache(policy):
    model, tokenizer = policy
    widths = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    try:
        ids, mask = encode_batch(tokenizer, [{"prompt": "abcabc="}], group_size=3)
        out = generate(model, ids, mask, SamplingConfig(10, 1.0), eos_id=-1, pad_id=tokenizer.pad_token_id,
                       generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert out["tokens"].shape == (3, 10)
    # prefill once over the prompt, then one single-token pass per new token but the last
    assert widths == [ids.shape[1]] + [1] * 9


def test_a_group_shares_one_prefill_and_samples_what_separate_prefills_sample(policy):
    model, tokenizer = policy
    examples = [{"prompt": p} for p in ("ab=", "abcd=")]
    ids, mask = encode_batch(tokenizer, examples, group_size=3)               # (6, P), prompt-major
    seeds = sample_seeds(7, 0, 0, 2, 3)
    rows = []
    hook = model.register_forward_pre_hook(lambda mod, args, kwargs: rows.append(kwargs["input_ids"].shape[0]),
                                           with_kwargs=True)
    try:
        shared = generate(model, ids, mask, SamplingConfig(6, 1.0), -1, tokenizer.pad_token_id, seeds=seeds,
                          group_size=3)
    finally:
        hook.remove()
    alone = generate(model, ids, mask, SamplingConfig(6, 1.0), -1, tokenizer.pad_token_id, seeds=seeds)
    assert rows[0] == 2 and set(rows[1:]) == {6}        # the prefill ran on the 2 prompts, decoding on 6 rows
    assert torch.equal(shared["tokens"], alone["tokens"])
    assert torch.allclose(shared["logprobs"], alone["logprobs"], atol=1e-5)
    assert torch.allclose(shared["entropy"], alone["entropy"], atol=1e-5)


def test_group_size_must_describe_the_rows(policy):
    model, tokenizer = policy
    ids, mask = encode_batch(tokenizer, [{"prompt": "ab="}, {"prompt": "ba="}], group_size=2)
    with pytest.raises(ValueError, match="not groups of 4"):
        generate(model, ids, mask, SamplingConfig(2, 1.0), -1, tokenizer.pad_token_id, group_size=4)
    with pytest.raises(ValueError, match="not groups of 2"):     # rows 0 and 1 hold different prompts
        generate(model, ids[[0, 2, 1, 3]], mask, SamplingConfig(2, 1.0), -1, tokenizer.pad_token_id, group_size=2)


def test_logprob_of_greedy_is_the_untempered_policy(policy):
    model, tokenizer = policy
    ids, mask = encode_batch(tokenizer, [{"prompt": "abc="}], 1)
    out = generate(model, ids, mask, SamplingConfig(1, 0.0), -1, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    assert math.isclose(float(out["logprobs"][0, 0]), float(torch.log_softmax(logits, -1).max()), abs_tol=1e-5)
