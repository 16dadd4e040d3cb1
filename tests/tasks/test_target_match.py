"""target_match: its splits, targets and token rewards."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokrl.tasks import TargetMatch

# the tiny tokenizer: <pad>=0 <eos>=1 <bos>=2, then one id per character from 3
A, B, C, D = 3, 4, 5, 6


@pytest.fixture(scope="module")
def full_task(tokenizer):
    """alphabet abcd, length 4: 4**4 = 256 inputs = 64 test + 192 train, so every input is present."""
    return {transform: TargetMatch(tokenizer, alphabet="abcd", length=4, transform=transform,
                                   num_train=192, num_test=64)
            for transform in ("copy", "reverse", "shift")}


def by_input(task: TargetMatch) -> dict[str, dict]:
    return {ex["prompt"].removesuffix("="): ex for split in ("train", "test") for ex in task.examples(split)}


def inputs(task: TargetMatch, split: str) -> list[str]:
    return [ex["prompt"] for ex in task.examples(split)]


# ---------------------------------------------------------------- target_match: splits

def test_tokenizer_ids_used_below(tokenizer):
    assert tokenizer("abcd", add_special_tokens=False)["input_ids"] == [A, B, C, D]


def test_splits_have_the_asked_sizes_and_are_disjoint(tokenizer):
    task = TargetMatch(tokenizer, alphabet="abcdefgh", length=4, num_train=100, num_test=20, seed=3)
    train, test = inputs(task, "train"), inputs(task, "test")
    assert len(train) == 100 and len(test) == 20
    assert len(set(train)) == 100 and len(set(test)) == 20   # distinct inside a split
    assert not set(train) & set(test)                         # and across splits


def test_splits_are_deterministic_by_seed(tokenizer):
    def make(seed):
        return TargetMatch(tokenizer, num_train=50, num_test=10, seed=seed)
    a, b, c = make(0), make(0), make(1)
    assert a.examples("train") == b.examples("train") and a.examples("test") == b.examples("test")
    assert inputs(a, "train") != inputs(c, "train")


def test_the_whole_input_space_is_split_when_it_is_small(full_task):
    task = full_task["copy"]
    assert sorted(by_input(task)) == sorted(
        a + b + c + d for a in "abcd" for b in "abcd" for c in "abcd" for d in "abcd")


def test_template_shapes_the_prompt(tokenizer):
    task = TargetMatch(tokenizer, alphabet="ab", length=2, num_train=2, num_test=2, template="in:{input}>")
    assert sorted(inputs(task, "train") + inputs(task, "test")) == ["in:aa>", "in:ab>", "in:ba>", "in:bb>"]


# ---------------------------------------------------------------- target_match: targets

@pytest.mark.parametrize("transform, source, target, ids", [
    ("copy", "abca", "abca", [A, B, C, A]),
    ("reverse", "abca", "acba", [A, C, B, A]),
    ("reverse", "abcd", "dcba", [D, C, B, A]),
    ("shift", "abca", "bcdb", [B, C, D, B]),      # a->b, b->c, c->d
    ("shift", "dddd", "aaaa", [A, A, A, A]),      # d wraps round to a
])
def test_targets_by_hand(full_task, transform, source, target, ids):
    ex = by_input(full_task[transform])[source]
    assert ex["prompt"] == f"{source}="
    assert ex["target"] == target and ex["target_ids"] == ids


def test_max_tokens_is_the_target_length(tokenizer, full_task):
    assert all(full_task["copy"].max_tokens(ex) == 4 for ex in full_task["copy"].examples("test"))
    task = TargetMatch(tokenizer, length=3, num_train=4, num_test=4)
    assert {task.max_tokens(ex) for ex in task.examples("train")} == {3}


@pytest.mark.parametrize("kwargs", [
    dict(transform="rot13"),
    dict(length=0),
    dict(length=-1),
    dict(alphabet="a"),
])
def test_bad_options_raise(tokenizer, kwargs):
    with pytest.raises(ValueError):
        TargetMatch(tokenizer, **kwargs)


# ---------------------------------------------------------------- target_match: token rewards

@pytest.fixture(scope="module")
def abca(full_task):
    """The copy example with target abca = [A, B, C, A]; each matched position pays 1/4."""
    return by_input(full_task["copy"])["abca"]


@pytest.mark.parametrize("completion, rewards", [
    ([A, B, C, A], [1 / 4, 1 / 4, 1 / 4, 1 / 4]),       # all right: return 1
    ([A, D, C, D], [1 / 4, 0, 1 / 4, 0]),               # half right: return 1/2
    ([B, A, A, C], [0, 0, 0, 0]),                       # right symbols, wrong places
    ([A, B], [1 / 4, 1 / 4]),                           # stopped early: one reward per token
    ([A, B, C, A, A, A], [1 / 4, 1 / 4, 1 / 4, 1 / 4, 0, 0]),  # past the target's end pays 0
    ([1, B, C, A], [0, 1 / 4, 1 / 4, 1 / 4]),           # an EOS where 'a' belongs
    ([], []),
])
def test_token_rewards_by_hand(full_task, abca, completion, rewards):
    assert full_task["copy"].token_rewards([abca], [completion]) == [pytest.approx(rewards)]


def test_token_rewards_are_per_completion(full_task, abca):
    dcba = by_input(full_task["copy"])["dcba"]
    got = full_task["copy"].token_rewards([abca, dcba], [[A, A, A, A], [D, C, B, A]])
    assert got == [[1 / 4, 0, 0, 1 / 4], [1 / 4] * 4]


def test_task_has_no_sequence_reward(full_task, abca):
    assert full_task["copy"].sequence_rewards([abca], ["abca"]) is None


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_token_rewards_sum_to_the_matched_fraction_and_are_causal(tokenizer, data):
    length = data.draw(st.integers(1, 6), label="length")
    task = TargetMatch(tokenizer, alphabet="abc", length=length, num_train=1, num_test=1,
                       seed=data.draw(st.integers(0, 10), label="seed"))
    ex = task.examples("train")[0]
    target = ex["target_ids"]
    ids = data.draw(st.lists(st.sampled_from([A, B, C, 1]), max_size=length + 3), label="completion")
    (rewards,) = task.token_rewards([ex], [ids])
    matched = sum(t < len(target) and tok == target[t] for t, tok in enumerate(ids))
    assert len(rewards) == len(ids)
    assert sum(rewards) == pytest.approx(matched / len(target))
    # causal: the rewards of a prefix are the prefix of the rewards
    for k in range(len(ids) + 1):
        assert task.token_rewards([ex], [ids[:k]])[0] == rewards[:k]
