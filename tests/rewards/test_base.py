"""The reward protocol: how a reward is called (arguments, async, conversational), how
its output is checked, weights, None, and how rewards combine."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from tokrl.rewards import TOKEN, Reward, RewardError, call_rewards, combine_sequence, combine_tokens

from .helpers import run


def test_a_reward_is_called_once_with_prompts_completions_ids_and_every_column():
    calls = []

    def spy(prompts, completions, completion_ids, answer, **kwargs):
        calls.append(dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                          answer=answer, **kwargs))
        return [1.0, 2.0]

    got = run(Reward("spy", spy), ["c1", "c2"], prompts=["p1", "p2"], ids=[[5], [6, 7]], answer=["a", "b"],
              level=[1, 2])
    assert got == [1.0, 2.0]
    assert calls == [{"prompts": ["p1", "p2"], "completions": ["c1", "c2"], "completion_ids": [[5], [6, 7]],
                      "answer": ["a", "b"], "level": [1, 2]}]


def test_a_function_without_kwargs_gets_only_the_arguments_it_names():
    def count_chars(completions):
        return [float(len(c)) for c in completions]

    assert run(Reward("n", count_chars), ["ab", "abcd"], answer=["x", "y"]) == [2.0, 4.0]


def test_required_parameters_that_are_not_standard_arguments_are_columns():
    def needs(prompts, completions, solution, hint=None, **kwargs):
        return [0.0] * len(completions)

    assert Reward("r", needs).columns == ("solution",)


def test_conversational_rewards_get_one_message_lists():
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [0.0]

    run(Reward("chat", spy, conversational=True), ["hi"], prompts=["q"])
    assert seen == {"prompts": [[{"role": "user", "content": "q"}]],
                    "completions": [[{"role": "assistant", "content": "hi"}]]}


def test_async_rewards_are_awaited_concurrently():
    # each waits for an event only the other one sets: run one after the other they
    # would both time out; run concurrently both finish
    a_started, b_started = asyncio.Event(), asyncio.Event()

    async def a(completions, **kwargs):
        a_started.set()
        await asyncio.wait_for(b_started.wait(), timeout=5)
        return [1.0] * len(completions)

    async def b(completions, **kwargs):
        b_started.set()
        await asyncio.wait_for(a_started.wait(), timeout=5)
        return [2.0] * len(completions)

    def sync(completions, **kwargs):
        return [3.0] * len(completions)

    out = call_rewards([Reward("a", a), Reward("sync", sync), Reward("b", b)], ["p"], ["c"], [[3]], {})
    assert out == {"a": [1.0], "sync": [3.0], "b": [2.0]}


def test_async_rewards_work_when_called_inside_a_running_event_loop():
    async def later(completions, **kwargs):
        await asyncio.sleep(0)
        return [0.5] * len(completions)

    async def caller():     # e.g. a notebook: a loop is already running in this thread
        return call_rewards([Reward("later", later)], ["p"], ["c"], [[3]], {})

    assert asyncio.run(caller()) == {"later": [0.5]}


def test_numpy_and_torch_outputs_are_accepted():
    assert run(Reward("np", lambda completions, **k: np.array([1, 2], dtype=np.float32)), ["a", "b"]) == [1.0, 2.0]
    assert run(Reward("pt", lambda completions, **k: torch.tensor([0.5, -1.0])), ["a", "b"]) == [0.5, -1.0]
    assert run(Reward("mixed", lambda completions, **k: [np.float64(0.25), None, True]), ["a", "b", "c"]) == \
        [0.25, None, 1.0]


@pytest.mark.parametrize("output, message", [
    ([1.0], "returned 1 values for 2 completions"),
    ([1.0, 2.0, 3.0], "returned 3 values for 2 completions"),
    (1.0, "returned float; expected a list of 2 floats"),
    ([1.0, float("nan")], "returned the non-finite value nan for completion 1 'bb'"),
    ([float("inf"), 0.0], "returned the non-finite value inf for completion 0 'a'"),
    ([1.0, "0.5"], "returned '0.5' \\(str\\)"),
])
def test_broken_outputs_raise_naming_the_reward(output, message):
    with pytest.raises(RewardError, match=f"reward 'broken' {message}"):
        run(Reward("broken", lambda completions, **k: output), ["a", "bb"])


def test_an_exception_inside_a_reward_names_it():
    def crash(completions, answer, **kwargs):
        return [float(a) for a in answer]

    with pytest.raises(RewardError, match=r"reward 'crash' failed: ValueError: could not convert"):
        run(Reward("crash", crash), ["a"], answer=["seven"])


def test_a_failing_reward_leaves_no_async_reward_unawaited(recwarn):
    async def fine(completions, **kwargs):
        return [1.0] * len(completions)

    def crash(completions, **kwargs):
        raise KeyError("answer")

    with pytest.raises(RewardError, match=r"reward 'crash' failed: KeyError"):
        call_rewards([Reward("fine", fine), Reward("crash", crash)], ["p"], ["c"], [[3]], {})
    import gc

    gc.collect()
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_token_rewards_must_give_one_value_per_token():
    def short(completion_ids, **kwargs):
        return [[0.0] * (len(ids) - 1) for ids in completion_ids]

    with pytest.raises(RewardError, match=r"returned 2 values for completion 0 'abc' of 3 tokens"):
        run(Reward("short", short, level=TOKEN), ["abc"], ids=[[3, 4, 5]])


def test_a_bad_weight_or_level_is_refused():
    with pytest.raises(RewardError, match="weight must be a finite number"):
        Reward("r", lambda **k: [], weight="high")
    with pytest.raises(RewardError, match="level must be sequence or token"):
        Reward("r", lambda **k: [], level="word")


def test_combine_sequence_by_hand():
    values = {"a": [1.0, None, None, 0.0], "b": [0.5, 2.0, None, -1.0]}
    # sample 0: 1*1.0 + 0.5*0.5; sample 1: only b scored it; sample 2: nobody; sample 3: 0 - 0.5
    assert combine_sequence(values, {"a": 1.0, "b": 0.5}) == [1.25, 1.0, None, -0.5]


def test_combine_tokens_by_hand():
    values = {"a": [[1.0, 0.0], None, None], "b": [[0.5, 0.5], [2.0], None]}
    assert combine_tokens(values, {"a": 2.0, "b": -1.0}, [2, 1, 3]) == [[1.5, -0.5], [-2.0], None]
