"""Tasks: target_match's splits, targets and token rewards; the prompt sampler; build_task."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokrl.tasks import TASKS, PromptSampler, TargetMatch, build_task
from tokrl.models.tiny import make_tokenizer

# the tiny tokenizer: <pad>=0 <eos>=1 <bos>=2, then one id per character from 3
A, B, C, D = 3, 4, 5, 6


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


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


# ---------------------------------------------------------------- PromptSampler

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


# ---------------------------------------------------------------- build_task

def test_build_task_passes_options(tokenizer):
    task = build_task("target_match", tokenizer, length=3, transform="reverse", num_train=8, num_test=2)
    assert isinstance(task, TargetMatch) and task.name == "target_match"
    assert task.length == 3 and task.transform == "reverse"
    assert len(task.examples("train")) == 8


def test_every_registered_task_is_named_by_its_key():
    assert all(cls.name == name for name, cls in TASKS.items())


def test_build_task_unknown_name(tokenizer):
    with pytest.raises(ValueError, match=r"unknown task 'nope'.*target_match"):
        build_task("nope", tokenizer)


def test_build_task_unknown_option_names_it(tokenizer):
    with pytest.raises(ValueError, match="lenght"):
        build_task("target_match", tokenizer, lenght=3)


# ---------------------------------------------------------------- arithmetic

def test_arithmetic_scores_exact_partial_and_wrong():
    from tokrl.tasks import Arithmetic

    task = Arithmetic(make_tokenizer(), num_train=10, num_test=5)
    # exact, with spaces and one trailing period allowed
    assert task.score("8", "8") == 1.0 and task.score("8", " 8. ") == 1.0
    # right number in the wrong format: the last integer decides
    assert task.score("8", "3 + 5 = 8") == 0.5 and task.score("8", "The answer is 8.") == 0.5
    # wrong: another last number, no number, or a number that only contains the answer
    assert task.score("8", "8 + 0 = 9") == 0.0 and task.score("8", "eight") == 0.0
    assert task.score("8", "18") == 0.0
    assert task.sequence_rewards([{"answer": "12"}, {"answer": "3"}], ["12", "so 3"]) == [1.0, 0.5]


def test_arithmetic_splits_are_disjoint_and_answers_right():
    from tokrl.tasks import Arithmetic

    task = Arithmetic(make_tokenizer(), op="*", digits=2, num_train=200, num_test=20, seed=3)
    train, test = task.examples("train"), task.examples("test")
    assert len(train) == 200 and len(test) == 20
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    a, b = [int(x) for x in test[0]["prompt"].split("?")[0].split("What is ")[1].split(" * ")]
    assert test[0]["answer"] == str(a * b) and 10 <= a <= 99
    with pytest.raises(ValueError, match="unknown op"):
        Arithmetic(make_tokenizer(), op="/")
    with pytest.raises(ValueError, match="num_test"):
        Arithmetic(make_tokenizer(), digits=1, num_test=100)
