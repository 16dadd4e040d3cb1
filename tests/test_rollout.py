"""The batched KV-cache rollout engine against the step-by-step environment and a
teacher-forced recomputation, on a real tiny Llama."""

import math

import pytest
import torch
from tokrl.config import ModelConfig, SamplingConfig
from tokrl.env import TokenEnv
from tokrl.losses import entropy as full_entropy
from tokrl.models.load import load_policy
from tokrl.generation.batch import rollout
from tokrl.generation.engine import generate
from tokrl.generation.prompts import encode_batch, longest_prompt
from tokrl.generation.sampling import inverse_cdf, process_logits, sample_seeds
from tokrl.tasks import TargetMatch, Task


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    """The tiny model as tokrl loads a policy (tokrl's attention)."""
    model, tokenizer = load_policy(ModelConfig(name=str(tiny_model_dir)))
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def task(policy):
    return TargetMatch(policy[1], alphabet="abcd", length=4, num_train=32, num_test=8)


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


def test_greedy_rollout_matches_stepping_the_env(policy, task):
    model, tokenizer = policy
    # prompts of different lengths force left padding in the batched engine; the
    # examples carry their targets, so one TargetMatch scores them all
    examples = [TargetMatch(tokenizer, alphabet="abcd", length=n, num_train=4, num_test=1, seed=n).examples("train")[0]
                for n in (2, 3, 5)]
    sampling = SamplingConfig(max_new_tokens=6, temperature=0.0)
    batch = rollout(model, tokenizer, task, examples, 1, sampling)

    env = TokenEnv(task, tokenizer, max_new_tokens=6)
    for i, ex in enumerate(examples):
        obs, _ = env.reset(options={"example": ex})
        tokens, rewards, done = [], [], False
        while not done:
            context = torch.tensor([TokenEnv.context(obs)])
            with torch.no_grad():
                action = int(model(input_ids=context).logits[0, -1].argmax())   # re-encodes: the slow way
            obs, r, terminated, truncated, _ = env.step(action)
            tokens.append(action)
            rewards.append(r)
            done = terminated or truncated
        n = int(batch.lengths[i])
        assert batch.tokens[i, :n].tolist() == tokens
        assert batch.rewards[i, :n].tolist() == pytest.approx(rewards)
        assert batch.mask[i].sum() == n


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
    m = completion_mask.float()
    assert torch.allclose(out["logprobs"] * m, logp * m, atol=1e-4)
    tempered = logits / sampling.temperature if sampling.temperature > 0 else logits
    assert torch.allclose(out["entropy"] * m, full_entropy(tempered) * m, atol=1e-4)


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


def test_rows_stop_at_eos_and_task_caps(policy, task):
    model, tokenizer = policy
    examples = task.examples("train")[:4]
    batch = rollout(model, tokenizer, task, examples, 2, SamplingConfig(12, 1.0), generator=torch.Generator().manual_seed(1))
    assert batch.tokens.shape[0] == 8 and batch.group_size == 2
    assert batch.prompt_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    eos = tokenizer.eos_token_id
    for i in range(8):
        n = int(batch.lengths[i])
        row = batch.tokens[i].tolist()
        assert n <= 4                                   # the target length ends the episode
        assert eos not in row[: n - 1]                  # EOS only ever as the last token
        assert all(t == tokenizer.pad_token_id for t in row[n:])
        assert batch.mask[i].tolist() == [1.0] * n + [0.0] * (batch.tokens.shape[1] - n)
        assert batch.logprobs[i, n:].abs().sum() == 0
    # rewards: 1/4 per matching position, summed into the score
    expected = torch.tensor(task.token_rewards(batch.examples, [batch.tokens[i, : batch.lengths[i]].tolist()
                                                                for i in range(8)])[0])
    assert torch.allclose(batch.rewards[0, : len(expected)], expected)


def test_sampling_is_reproducible_under_a_seeded_generator(policy, task):
    model, tokenizer = policy
    examples = task.examples("train")[:3]
    a = rollout(model, tokenizer, task, examples, 2, SamplingConfig(6, 1.0), generator=torch.Generator().manual_seed(7))
    b = rollout(model, tokenizer, task, examples, 2, SamplingConfig(6, 1.0), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)


def test_sequence_rewards_land_on_the_last_token(policy):
    model, tokenizer = policy

    class Length(Task):
        """Pays len(text) once, at the end."""
        def max_tokens(self, example):
            return 3
        def sequence_rewards(self, examples, completions):
            return [float(len(c)) for c in completions]

    batch = rollout(model, tokenizer, Length(), [{"prompt": "ab"}], 2, SamplingConfig(5, 1.0),
                    generator=torch.Generator().manual_seed(0))
    for i in range(2):
        n = int(batch.lengths[i])
        assert batch.rewards[i, : n - 1].abs().sum() == 0
        assert batch.rewards[i, n - 1] == len(batch.texts[i])


def test_empty_prompt_is_refused(policy):
    _, tokenizer = policy
    with pytest.raises(ValueError, match="empty prompt"):
        encode_batch(tokenizer, [{"prompt": ""}], 1)


def test_logprob_of_greedy_is_the_untempered_policy(policy):
    model, tokenizer = policy
    ids, mask = encode_batch(tokenizer, [{"prompt": "abc="}], 1)
    out = generate(model, ids, mask, SamplingConfig(1, 0.0), -1, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    assert math.isclose(float(out["logprobs"][0, 0]), float(torch.log_softmax(logits, -1).max()), abs_tol=1e-5)


# ------------------------------------------------- per-row sampling noise (data parallel)

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


def test_a_rows_completion_does_not_depend_on_the_rest_of_its_batch(policy, task):
    # what makes one process and W processes draw the same samples: rows keyed by
    # (seed, step, prompt, sample), prompts padded to the step's widest
    model, tokenizer = policy
    examples = task.examples("train")[:4]
    sampling = SamplingConfig(6, 1.0, top_k=5)
    width = longest_prompt(tokenizer, examples)
    whole = rollout(model, tokenizer, task, examples, 2, sampling, seeds=sample_seeds(3, 1, 0, 4, 2),
                    prompt_width=width)
    for first in (0, 2):
        half = rollout(model, tokenizer, task, examples[first:first + 2], 2, sampling,
                       seeds=sample_seeds(3, 1, first, 2, 2), prompt_width=width)
        rows = slice(2 * first, 2 * first + 4)
        T = half.tokens.shape[1]
        assert torch.equal(half.tokens, whole.tokens[rows, :T])
        assert torch.allclose(half.logprobs, whole.logprobs[rows, :T], atol=1e-6)
    assert whole.prompt_ids.shape[1] == width
