"""PromptSampler: epochs, shuffling, and its state across a checkpoint."""

from __future__ import annotations

import pytest

from tokrl.tasks import PromptSampler


EXAMPLES = [{"prompt": str(i)} for i in range(5)]


def draws(sampler: PromptSampler, n: int) -> list[str]:
    return [ex["prompt"] for ex in sampler.sample(n)]


def test_each_epoch_draws_every_example_once():
    seq = draws(PromptSampler(EXAMPLES, seed=0), 20)       # 4 epochs of 5
    for epoch in range(4):
        assert sorted(seq[5 * epoch: 5 * epoch + 5]) == ["0", "1", "2", "3", "4"]


def test_epoch_boundary_inside_a_call():
    sampler = PromptSampler(EXAMPLES, seed=0)
    seq = draws(sampler, 3) + draws(sampler, 4)            # the second call crosses into epoch 1
    assert sorted(seq[:5]) == ["0", "1", "2", "3", "4"]
    assert sampler.state_dict() == {"seed": 0, "epoch": 1, "position": 2}


def test_each_epoch_is_reshuffled():
    seq = draws(PromptSampler(EXAMPLES, seed=0), 20)
    orders = {tuple(seq[5 * e: 5 * e + 5]) for e in range(4)}
    assert len(orders) > 1


def test_order_is_deterministic_by_seed():
    assert draws(PromptSampler(EXAMPLES, seed=7), 12) == draws(PromptSampler(EXAMPLES, seed=7), 12)
    many = [{"prompt": str(i)} for i in range(50)]
    assert draws(PromptSampler(many, seed=0), 50) != draws(PromptSampler(many, seed=1), 50)


@pytest.mark.parametrize("done", [0, 3, 5, 7, 12])
def test_state_dict_round_trip_resumes_the_same_sequence(done):
    uninterrupted = draws(PromptSampler(EXAMPLES, seed=11), done + 9)
    first = PromptSampler(EXAMPLES, seed=11)
    draws(first, done)
    resumed = PromptSampler(EXAMPLES, seed=0)               # a different seed: the state wins
    resumed.load_state_dict(first.state_dict())
    assert resumed.state_dict() == first.state_dict()
    assert draws(resumed, 9) == uninterrupted[done:]


def test_state_dict_is_plain_data():
    state = PromptSampler(EXAMPLES, seed=4).state_dict()
    assert state == {"seed": 4, "epoch": 0, "position": 0}


def test_sampler_needs_examples():
    with pytest.raises(ValueError, match="no training examples"):
        PromptSampler([], seed=0)
