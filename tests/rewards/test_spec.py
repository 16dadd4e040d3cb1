"""Rewards named in a recipe: clear errors for bad specs, distinct names, user functions
by import path, and reward functions copied unchanged from TRL's GRPOTrainer documentation."""

from __future__ import annotations

import sys
import textwrap

import pytest

from tokrl.rewards import TOKEN, RewardError, build_reward, build_rewards, call_rewards, combine_sequence, load_callable

from .helpers import run


@pytest.mark.parametrize("spec, message", [
    ({"name": "blue"}, r"unknown reward 'blue'; built-in rewards: bleu, chrf"),
    ({"name": "bleu", "colum": "ref"}, r"unknown option 'colum' for reward bleu; valid: column"),
    ({"name": "length"}, r"reward length needs the option 'target'"),
    ({"name": "length", "target": 0}, r"length: target must be a positive integer"),
    ({"name": "format", "pattern": "("}, r"bad regular expression"),
    ({"name": "rouge", "variant": "rougeX"}, r"unknown variant 'rougeX'"),
    ({"name": "sentiment", "target": "happy"}, r"target must be positive or negative"),
    ({"weight": 1.0}, r"exactly one of name"),
    ({"name": "bleu", "fn": "x:y"}, r"exactly one of name"),
    ({"name": "bleu", "weight": "a lot"}, r"weight must be a finite number"),
    ({"reward_model": "runs/rm", "batch": 8}, r"unknown option 'batch' for reward reward_model; valid: batch_size, "
                                              r"dtype, weight"),
    ("bleu", r"a reward is a mapping"),
])
def test_bad_reward_specs_raise_clear_errors(spec, message):
    with pytest.raises(RewardError, match=message):
        build_reward(spec)


def test_rewards_are_logged_under_distinct_names():
    rewards = build_rewards([{"name": "bleu"}, {"name": "bleu", "label": "bleu_title", "column": "title"}])
    assert [r.name for r in rewards] == ["bleu", "bleu_title"]
    assert rewards[1].columns == ("title",)
    with pytest.raises(RewardError, match="two rewards are logged as 'bleu'; give one of them a label"):
        build_rewards([{"name": "bleu"}, {"name": "bleu", "column": "title"}])
    with pytest.raises(RewardError, match="non-empty list"):
        build_rewards([])


# ==================================================================== user functions

USER_MODULE = '''
import math

def score(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]

def scaled(completions, factor, **kwargs):
    return [factor * len(c) for c in completions]

def strict(completions):
    return [0.0 for _ in completions]

def too_few(completions, **kwargs):
    return [1.0]

def not_finite(completions, **kwargs):
    return [math.nan for _ in completions]

def per_token(completion_ids, **kwargs):
    return [[0.5 if t == 0 else 0.0 for t in range(len(ids))] for ids in completion_ids]

class Scorer:
    def __call__(self, completions, **kwargs):
        return [0.5 for _ in completions]

scorer = Scorer()
NOT_CALLABLE = 3

calls = []

def overlong(max_completion_len, soft_punish_cache):
    """A factory like TRL's get_soft_overlong_punishment: its result is the reward."""
    calls.append((max_completion_len, soft_punish_cache))
    def punish(completions, **kwargs):
        return [-1.0 if len(c) > max_completion_len - soft_punish_cache else 0.0 for c in completions]
    return punish
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """my_rewards.py in a directory on sys.path (a fresh import each test)."""
    (tmp_path / "my_rewards.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_rewards", raising=False)
    yield tmp_path
    sys.modules.pop("my_rewards", None)


def test_a_user_function_by_import_path(user_module):
    reward = build_reward({"fn": "my_rewards:score", "weight": 0.5})
    assert (reward.name, reward.weight, reward.level) == ("score", 0.5, "sequence")
    assert run(reward, ["ab", "abcd"]) == [2.0, 4.0]
    assert run(build_reward({"fn": "my_rewards:scorer", "label": "s"}), ["a"]) == [0.5]


def test_a_token_level_user_function(user_module):
    reward = build_reward({"fn": "my_rewards:per_token", "level": "token"})
    assert reward.level == TOKEN
    assert run(reward, ["ab", "c"], ids=[[3, 4], [5]]) == [[0.5, 0.0], [0.5]]
    with pytest.raises(RewardError, match="level must be sequence or token, got 'word'"):
        build_reward({"fn": "my_rewards:per_token", "level": "word"})


def test_a_reward_factory_is_called_once_and_its_result_is_the_reward(user_module):
    import my_rewards

    reward = build_reward({"fn": "my_rewards:overlong", "factory": {"max_completion_len": 4, "soft_punish_cache": 1}})
    assert run(reward, ["ab", "abcd"]) == [0.0, -1.0]
    assert run(reward, ["abcde"]) == [-1.0]
    assert my_rewards.calls == [(4, 1)]                        # once, not on every batch
    with pytest.raises(RewardError, match="reward fn 'my_rewards:overlong': calling the factory failed: TypeError"):
        build_reward({"fn": "my_rewards:overlong", "factory": {"max_completion_len": 4}})
    with pytest.raises(RewardError, match="the factory returned a list, not a reward function"):
        build_reward({"fn": "my_rewards:too_few", "factory": {"completions": []}})


def test_extra_keys_of_a_user_reward_are_passed_as_keyword_arguments(user_module):
    assert run(build_reward({"fn": "my_rewards:scaled", "factor": 0.25}), ["abcd"]) == [1.0]
    with pytest.raises(RewardError, match=r"reward fn 'my_rewards:strict' takes no option\(s\) factor"):
        build_reward({"fn": "my_rewards:strict", "factor": 1})


def test_a_user_function_from_a_python_file(tmp_path):
    path = tmp_path / "elsewhere" / "rewards_file.py"
    path.parent.mkdir()
    path.write_text(USER_MODULE)
    assert run(build_reward({"fn": f"{path}:score"}), ["abc"]) == [3.0]


def test_a_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "cwd_rewards.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        assert run(build_reward({"fn": "cwd_rewards:score"}), ["ab"]) == [2.0]
    finally:
        sys.modules.pop("cwd_rewards", None)
    assert str(tmp_path) not in sys.path                       # put back as it was


@pytest.mark.parametrize("path, message", [
    ("no_such_module_xyz:score", r"no module named 'no_such_module_xyz'"),
    ("my_rewards:nope", r"module my_rewards has no 'nope'; callables there: .*score"),
    ("my_rewards:NOT_CALLABLE", r"is a int, not a function"),
    ("my_rewards", r"not of the form module:function"),
    ("my_rewards:a:b", r"not of the form module:function"),
    ("missing_file.py:score", r"file missing_file.py not found"),
])
def test_a_missing_module_or_name_is_a_clear_error(user_module, path, message):
    with pytest.raises(RewardError, match=message):
        load_callable(path)


def test_a_module_whose_own_import_fails_says_so(tmp_path, monkeypatch):
    (tmp_path / "broken_rewards.py").write_text("import not_installed_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardError, match=r"imports 'not_installed_pkg_xyz', which is not installed"):
        load_callable("broken_rewards:score")
    (tmp_path / "raising_rewards.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RewardError, match=r"importing raising_rewards failed: RuntimeError: boom"):
        load_callable("raising_rewards:score")


def test_a_user_function_returning_the_wrong_count_or_a_nan_is_a_clear_error(user_module):
    with pytest.raises(RewardError, match=r"reward 'too_few' returned 1 values for 3 completions"):
        run(build_reward({"fn": "my_rewards:too_few"}), ["a", "b", "c"])
    with pytest.raises(RewardError, match=r"reward 'not_finite' returned the non-finite value nan for completion 0"):
        run(build_reward({"fn": "my_rewards:not_finite"}), ["a"])


# ==================================================================== TRL's documented reward functions

# Copied unchanged from TRL's GRPOTrainer documentation ("Using a custom reward
# function": examples 1.1, 2, 3 and 5; docs/source/grpo_trainer.md).
TRL_DOC_REWARDS = textwrap.dedent(r'''
    import asyncio
    import re

    def reward_func(completions, **kwargs):
        """Reward function that assigns higher scores to longer completions (in terms of character count)."""
        return [float(len(completion)) for completion in completions]

    def format_reward_func(completions, **kwargs):
        """Reward function that checks if the completion has a specific format."""
        pattern = r"^<think>.*?</think><answer>.*?</answer>$"
        completion_contents = [completion[0]["content"] for completion in completions]
        matches = [re.match(pattern, content) for content in completion_contents]
        return [1.0 if match else 0.0 for match in matches]

    def boxed_reward_func(completions, ground_truth, **kwargs):
        # Regular expression to capture content inside \boxed{}
        matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
        contents = [match.group(1) if match else "" for match in matches]
        # Reward 1 if the content is the same as the ground truth, 0 otherwise
        return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]

    async def async_reward_func(prompts, completions, **kwargs):
        # Simulate an I/O-bound call (e.g., HTTP request, database lookup)
        await asyncio.sleep(0.01)
        # Simple toy reward: 1.0 if the completion is non-empty, else 0.0
        return [1.0 if completion else 0.0 for completion in completions]
''')
# (example 3 is named reward_func in the docs too; it is renamed here only because one
# module cannot hold two functions of the same name)


@pytest.fixture
def trl_rewards(tmp_path, monkeypatch):
    (tmp_path / "trl_doc_rewards.py").write_text(TRL_DOC_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("trl_doc_rewards", None)


def test_trl_doc_example_1_1_length_reward(trl_rewards):
    # the docs: completions [" blue.", " in the sky."] -> [6.0, 12.0]
    reward = build_reward({"fn": "trl_doc_rewards:reward_func"})
    assert run(reward, [" blue.", " in the sky."], prompts=["The sky is", "The sun is"]) == [6.0, 12.0]


def test_trl_doc_example_2_format_reward_in_conversational_format(trl_rewards):
    reward = build_reward({"fn": "trl_doc_rewards:format_reward_func", "conversational": True})
    completions = [("<think>The sum of 1 and 2 is 3, which we multiply by 4 to get 12.</think>"
                    "<answer>(1 + 2) * 4 = 12</answer>"),
                   "The sum of 3 and 1 is 4, which we multiply by 2 to get 8. So (3 + 1) * 2 = 8."]
    assert run(reward, completions, prompts=["What is the result of (1 + 2) * 4?",
                                             "What is the result of (3 + 1) * 2?"]) == [1.0, 0.0]


def test_trl_doc_example_3_reward_with_a_ground_truth_column(trl_rewards):
    reward = build_reward({"fn": "trl_doc_rewards:boxed_reward_func"})
    assert reward.columns == ("ground_truth",)
    completions = [r" The solution is \boxed{2}.", r" The solution is \boxed{6}."]
    assert run(reward, completions, ground_truth=["2", "5"]) == [1.0, 0.0]


def test_trl_doc_example_5_async_reward_with_others_and_weights(trl_rewards):
    rewards = build_rewards([{"fn": "trl_doc_rewards:async_reward_func", "weight": 2.0},
                             {"fn": "trl_doc_rewards:reward_func", "weight": 0.5}])
    values = call_rewards(rewards, ["p", "p"], ["abcd", ""], [[3], [1]], {})
    assert values == {"async_reward_func": [1.0, 0.0], "reward_func": [4.0, 0.0]}
    assert combine_sequence(values, {r.name: r.weight for r in rewards}) == [2.0 + 2.0, 0.0]
