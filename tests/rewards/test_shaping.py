"""Potential-based shaping: each token is paid its increment of the score, and the
increments sum to the score of the whole completion."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokrl.rewards import TOKEN, Reward, build_reward, shape, shaped

from .helpers import builtin, run


def ids_of(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def test_shape_pays_each_token_its_increment():
    assert shape([0.25, 0.5, 0.5, 1.0]) == [0.25, 0.25, 0.0, 0.5]
    assert shape([]) == []
    assert shape([0.75, 0.25]) == [0.75, -0.5]                  # a token can lose score
    # a prefix the scorer cannot score keeps the potential before it
    assert shape([None, 0.5, None, 0.25]) == [0.0, 0.5, 0.0, -0.25]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-64, 64).map(lambda k: k / 16), min_size=1, max_size=20))
def test_shaped_rewards_sum_to_the_final_score_exactly(potentials):
    # dyadic potentials (k/16) make every float operation exact: the telescoping sum is
    # the final score to the last bit
    assert sum(shape(potentials)) == potentials[-1]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=20))
def test_shaped_rewards_sum_to_the_final_score_for_any_floats(potentials):
    assert math.fsum(shape(potentials)) == pytest.approx(potentials[-1], rel=1e-12, abs=1e-9)


def test_a_shaped_builtin_scores_every_prefix(tokenizer):
    # length with target 4 chars: Φ(k chars) = 1 - |k - 4| / 4 = .25 .5 .75 1 .75 .5 for k = 1..6
    reward = build_reward({"name": "length", "target": 4, "shaped": True}, tokenizer)
    assert reward.level == TOKEN
    (rewards,) = run(reward, ["abcdef"], ids=ids_of(tokenizer, ["abcdef"]))
    assert rewards == [0.25, 0.25, 0.25, 0.25, -0.25, -0.25]
    assert sum(rewards) == 0.5 == run(builtin("length", target=4), ["abcdef"])[0]


def test_eos_and_other_special_tokens_earn_nothing_under_shaping(tokenizer):
    reward = build_reward({"name": "length", "target": 2, "shaped": True}, tokenizer)
    ids = ids_of(tokenizer, ["ab"])[0] + [tokenizer.eos_token_id]
    assert run(reward, ["ab"], ids=[ids]) == [[0.5, 0.5, 0.0]]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.text(alphabet="abc ", min_size=1, max_size=8), min_size=1, max_size=4))
def test_shaped_chrf_sums_to_the_chrf_of_the_completion(tokenizer, completions):
    refs = ["abc cab"] * len(completions)
    dense = run(build_reward({"name": "chrf", "shaped": True}, tokenizer), completions,
                ids=ids_of(tokenizer, completions), reference=refs)
    final = run(build_reward({"name": "chrf"}), completions, reference=refs)
    for row, score in zip(dense, final):
        assert math.fsum(row) == pytest.approx(score, abs=1e-12)


def test_a_shaped_reward_that_cannot_score_the_completion_leaves_it_unscored(tokenizer):
    def only_long(completions, **kwargs):
        return [None if len(c) < 3 else 1.0 for c in completions]

    reward = shaped(Reward("only_long", only_long), tokenizer)
    out = run(reward, ["abc", "ab"], ids=ids_of(tokenizer, ["abc", "ab"]))
    assert out == [[0.0, 0.0, 1.0], None]
