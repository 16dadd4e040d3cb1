"""Multi-turn episodes on tokrl's engine (tokrl/generation/multiturn.py): the log-probs it
records equal teacher forcing of the whole conversation, its KV-cache continuation equals a
no-cache recompute, a row's episode does not depend on its batch, and environment tokens
get exactly zero gradient."""

from __future__ import annotations

import pytest
import torch

from tokrl import losses
from tokrl.config import Config, SamplingConfig
from tokrl.generation.batch import rollout
from tokrl.generation.prompts import encode_batch
from tokrl.generation.sampling import process_logits
from tokrl.generation.turns import ObservationFormat, Turns
from tokrl.models.forward import forward
from tokrl.tasks import build_task


@pytest.fixture
def guess(policy):
    _, tokenizer = policy
    return build_task("guess_number", tokenizer, n=4, max_turns=4, max_episode_tokens=40)


def episodes(policy, task, sampling, examples, group_size=2, seed=0):
    model, tokenizer = policy
    N = len(examples) * group_size
    return rollout(model, tokenizer, task, examples, group_size, sampling,
                   seeds=torch.arange(seed, seed + N), env_seeds=list(range(len(examples))))


@pytest.mark.parametrize("sampling", [SamplingConfig(3, 1.0), SamplingConfig(3, 0.7, top_k=8), SamplingConfig(3, 0.0)])
def test_logprobs_equal_teacher_forcing_of_the_whole_conversation(policy, guess, sampling):
    batch = episodes(policy, guess, sampling, guess.examples("train")[:3])
    assert (batch.mask.sum(1) < batch.lengths).any()          # observations were inserted: holes in the mask
    logits, _ = forward(policy[0], None, batch, "float32")
    logp = losses.token_logprobs(process_logits(logits, sampling), batch.tokens)
    m = batch.mask > 0
    assert torch.allclose(torch.where(m, batch.logprobs, 0.0), torch.where(m, logp, 0.0), atol=1e-4)
    tempered = logits / sampling.temperature if sampling.temperature > 0 else logits
    assert torch.allclose(torch.where(m, batch.entropy, 0.0), torch.where(m, losses.entropy(tempered), 0.0), atol=1e-4)
    assert torch.equal(batch.logprobs[~m], torch.zeros(int((~m).sum())))


def test_kv_continuation_equals_a_no_cache_recompute(policy, guess):
    """Greedy episodes through the cached engine are the ones a loop that re-runs the whole
    conversation for every token (no cache) decodes."""
    model, tokenizer = policy
    sampling = SamplingConfig(3, 0.0)
    examples = guess.examples("train")[:4]
    batch = episodes(policy, guess, sampling, examples, group_size=1)
    for i, example in enumerate(examples):
        ids, _ = encode_batch(tokenizer, [example], 1)
        turns = Turns(guess, tokenizer, [guess.make(i)], ObservationFormat(tokenizer, False), sampling.max_new_tokens)
        turns.episodes[0].env.reset(example)
        while not turns.done(0):
            forced = turns.forced(0)
            if forced is None:
                context = torch.tensor([ids[0].tolist() + turns.episodes[0].ids])
                with torch.no_grad():
                    logits = model(input_ids=context).logits[0, -1]
                turns.add(0, int(logits.argmax()), 0.0, 0.0)
            else:
                turns.add(0, forced, 0.0, 0.0)
        assert batch.tokens[i, : batch.lengths[i]].tolist() == turns.episodes[0].ids


def test_a_rows_episode_does_not_depend_on_the_rest_of_its_batch(policy, guess):
    sampling = SamplingConfig(3, 1.0)
    examples = guess.examples("train")[:3]
    model, tokenizer = policy
    together = rollout(model, tokenizer, guess, examples, 2, sampling, seeds=torch.arange(6), env_seeds=[7, 8, 9])
    alone = rollout(model, tokenizer, guess, examples[1:2], 2, sampling, seeds=torch.arange(2, 4), env_seeds=[8])
    n = int(alone.lengths.max())
    assert torch.equal(together.tokens[2:4, :n], alone.tokens[:, :n])
    assert torch.equal(together.lengths[2:4], alone.lengths)
    assert torch.allclose(together.logprobs[2:4, :n], alone.logprobs[:, :n], atol=1e-5)


def test_the_gradient_at_every_environment_token_is_exactly_zero(policy, guess, monkeypatch):
    """PPO with a critic, an entropy bonus and KL in the loss: the loss's gradient with
    respect to the logits of every environment token (and of padding) is exactly 0."""
    from tokrl.advantages import MovingAverage
    from tokrl.algorithms import AlgoConfig, resolve
    from tokrl.kl import KLConfig
    from tokrl.models.heads import ValueHead
    from tokrl.training import update as update_module
    from tokrl.training.collect import estimate
    from tokrl.training.update import Learner, microbatch_loss

    model, tokenizer = policy
    sampling = SamplingConfig(3, 1.0)
    batch = episodes(policy, guess, sampling, guess.examples("train")[:3])
    batch.rewards = batch.rewards + 0.5 * batch.mask             # some reward on every turn
    head = ValueHead(model.config.hidden_size)
    with torch.no_grad():
        batch.values = head(torch.randn(batch.num_sequences, batch.tokens.shape[1], model.config.hidden_size))
    batch.values = batch.values * batch.mask
    batch.ref_logprobs = batch.logprobs - 0.1 * batch.mask
    cfg = Config(algo=AlgoConfig(estimator="gae", policy_loss="ppo", entropy_coef=0.1),
                 kl=KLConfig(coef=0.1, in_reward=False), sampling=sampling)
    recipe = resolve(cfg.algo, cfg.kl, 1)
    batch, _ = estimate(batch, recipe, MovingAverage(), 0.1)
    env_tokens = (batch.mask == 0) & (torch.arange(batch.tokens.shape[1])[None] < batch.lengths[:, None])
    assert env_tokens.any() and (batch.advantages[env_tokens] == 0).all() and (batch.returns[env_tokens] == 0).all()
    kept = {}

    def forward_keeping_logits(*args):
        logits, values = forward(*args)
        logits.retain_grad()
        kept["logits"] = logits
        return logits, values
    monkeypatch.setattr(update_module, "forward", forward_keeping_logits)
    learner = Learner(model, head, torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.0))
    loss, _ = microbatch_loss(learner, batch, recipe, cfg, 0.1, batch.mask.sum(), torch.tensor(6.0))
    loss.backward()
    model.zero_grad()
    grad = kept["logits"].grad                                                   # (N, T, V)
    assert grad[batch.mask > 0].abs().sum() > 0
    assert torch.equal(grad[batch.mask == 0], torch.zeros_like(grad[batch.mask == 0]))
