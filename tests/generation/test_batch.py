"""rollout(): the batched engine against the step-by-step environment, rows that stop
at EOS and at the task's cap, rewards on the right tokens, reproducible and
batch-independent samples, on a real tiny Llama."""

import pytest
import torch

from tokrl.config import SamplingConfig
from tokrl.env import TokenEnv
from tokrl.generation.batch import rollout
from tokrl.generation.prompts import longest_prompt
from tokrl.generation.sampling import sample_seeds
from tokrl.tasks import TargetMatch, Task


@pytest.fixture(scope="module")
def task(policy):
    return TargetMatch(policy[1], alphabet="abcd", length=4, num_train=32, num_test=8)


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
