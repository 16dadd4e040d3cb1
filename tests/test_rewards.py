"""Rewards: the protocol (calls, async, checks, weights, None), potential-based shaping,
every built-in reward on hand-checked inputs, user functions by import path, and
reward functions copied unchanged from TRL's GRPOTrainer documentation."""

from __future__ import annotations

import asyncio
import math
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokrl.rewards import (
    TOKEN,
    Reward,
    RewardError,
    build_reward,
    build_rewards,
    call_rewards,
    combine_sequence,
    combine_tokens,
    load_callable,
    shape,
    shaped,
)
from tokrl.models.tiny import make_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def ids_of(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def run(reward: Reward, completions, prompts=None, ids=None, **columns):
    """The checked values of one reward on one batch."""
    prompts = prompts or ["p"] * len(completions)
    ids = ids if ids is not None else [[3] * max(1, len(c)) for c in completions]
    return call_rewards([reward], prompts, completions, ids, columns)[reward.name]


def builtin(name, **options):
    return build_reward({"name": name, **options})


# ==================================================================== the protocol

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


# ==================================================================== shaping

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
def test_shaped_chrf_sums_to_the_chrf_of_the_completion(completions):
    tokenizer = make_tokenizer()
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


# ==================================================================== built-in rewards

@pytest.mark.parametrize("completion, answer, options, expected", [
    ("Paris", "Paris", {}, 1.0),
    ("  Paris \n", "Paris", {}, 1.0),                          # surrounding whitespace is stripped
    ("New   York", "New York", {}, 1.0),                       # runs of whitespace are one space
    ("paris", "Paris", {}, 0.0),
    ("paris", "Paris", {"ignore_case": True}, 1.0),
    ("Paris!", "Paris", {}, 0.0),
    ("Lyon", ["Paris", "Lyon"], {}, 1.0),                      # a list holds several right answers
    ("the answer: 42", "42", {"pattern": r"answer:\s*(\S+)"}, 1.0),
    ("no answer here", "42", {"pattern": r"answer:\s*(\S+)"}, 0.0),
    ("7", 7, {}, 1.0),                                         # a number in the data compares as text
])
def test_exact_match(completion, answer, options, expected):
    assert run(builtin("exact_match", **options), [completion], answer=[answer]) == [expected]


@pytest.mark.parametrize("completion, answer, expected", [
    ("42", "42", 1.0),
    ("The answer is 42.", 42, 1.0),                            # the trailing full stop is not a decimal point
    ("first 3 then 41", "41", 1.0),                            # the last number counts
    ("first 41 then 3", "41", 0.0),
    ("1,234,567", "1234567", 1.0),                             # thousands separators
    ("-3.50", "-3.5", 1.0),
    ("6.02e23", "602000000000000000000000", 1.0),
    ("0.1", 0.1000000001, 1.0),                                # within rel_tol 1e-6
    ("0.1", 0.1001, 0.0),
    ("no number", "5", 0.0),
    ("5", "five", None),                                       # the answer has no number: cannot score
    ("5", ["five", "5"], 1.0),
])
def test_numeric_match(completion, answer, expected):
    assert run(builtin("numeric_match"), [completion], answer=[answer]) == [expected]


@pytest.mark.parametrize("completion, answer, expected", [
    (r"so the result is \boxed{\frac{1}{2}}", "0.5", 1.0),
    (r"the answer is $\frac{2}{4}$", r"\frac{1}{2}", 1.0),     # equal values, different forms
    (r"$x = 3$", "4", 0.0),
    ("I have no idea", "4", 0.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
    (r"\boxed{2\sqrt{2}}", "2*sqrt(2)", 1.0),
    ("42", "?!", None),                                        # the gold does not parse: cannot score
    ("42", "", None),
])
def test_math(completion, answer, expected):
    assert run(builtin("math"), [completion], answer=[answer]) == [expected]


def test_math_works_off_the_main_thread():
    # math-verify's timeouts use signal.alarm, which only the main thread may use
    got = []
    thread = threading.Thread(target=lambda: got.append(run(builtin("math"), [r"\boxed{3}"], answer=["3"])))
    thread.start()
    thread.join()
    assert got == [[1.0]]


def test_bleu_by_hand():
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat": clipped n-gram precisions
    # 5/6, 3/5, 2/4, 1/3; equal lengths, so no brevity penalty: BLEU = (1/12)^(1/4)
    reward = builtin("bleu")
    got = run(reward, ["the cat sat on the mat", "the cat sat on a mat", "dogs bark"],
              reference=["the cat sat on a mat"] * 3)
    assert got == pytest.approx([(1 / 12) ** 0.25, 1.0, 0.0])


def test_bleu_takes_the_best_of_several_references():
    got = run(builtin("bleu"), ["the cat sat on a mat"], reference=[["dogs bark loudly", "the cat sat on a mat"]])
    assert got == pytest.approx([1.0])


def test_chrf_by_hand():
    # unigrams only: hyp "ab" vs ref "abc": precision 2/2, recall 2/3;
    # F_beta with beta 2 = (1 + 4) P R / (4 P + R) = (10/3) / (14/3) = 5/7
    assert run(builtin("chrf", char_order=1), ["ab"], reference=["abc"]) == pytest.approx([5 / 7])
    assert run(builtin("chrf"), ["hello world", "zzz"], reference=["hello world"] * 2) == pytest.approx([1.0, 0.0])


def test_rouge_by_hand():
    # "the cat sat" vs "the cat sat on the mat": 3 shared unigrams; P = 3/3, R = 3/6, F = 2/3
    hyp, ref = ["the cat sat"], ["the cat sat on the mat"]
    assert run(builtin("rouge", variant="rouge1"), hyp, reference=ref) == pytest.approx([2 / 3])
    assert run(builtin("rouge", variant="rouge1", measure="precision"), hyp, reference=ref) == pytest.approx([1.0])
    assert run(builtin("rouge", variant="rouge1", measure="recall"), hyp, reference=ref) == pytest.approx([0.5])
    # bigrams: "the cat", "cat sat" shared of 2 and 5: P = 1, R = 2/5, F = 2 * 0.4 / 1.4 = 4/7
    assert run(builtin("rouge", variant="rouge2"), hyp, reference=ref) == pytest.approx([4 / 7])
    # rougeL: the longest common subsequence of "mat the cat" and the reference is
    # "the cat": P = 2/3, R = 2/6, F = 2 P R / (P + R) = 4/9
    assert run(builtin("rouge", variant="rougeL"), ["mat the cat"], reference=ref) == pytest.approx([4 / 9])


def test_sentiment_by_hand():
    # VADER: a single lexicon word of valence v gives compound v / sqrt(v^2 + 15);
    # love = 3.2, hate = -2.7 in its lexicon
    love, hate = 3.2 / math.sqrt(3.2 ** 2 + 15), -2.7 / math.sqrt(2.7 ** 2 + 15)
    texts = ["I love this", "I hate this", "the table"]
    assert run(builtin("sentiment"), texts) == pytest.approx([love, hate, 0.0], abs=1e-4)
    assert run(builtin("sentiment", target="negative"), texts) == pytest.approx([-love, -hate, 0.0], abs=1e-4)


@pytest.mark.parametrize("options, completion, ids, expected", [
    ({"target": 10}, "abcde", None, 0.5),                      # 1 - |5 - 10| / 10
    ({"target": 10}, "x" * 10, None, 1.0),
    ({"target": 10}, "x" * 15, None, 0.5),
    ({"target": 10}, "x" * 25, None, 0.0),                     # floored at 0
    ({"target": 2, "unit": "words"}, "one two three", None, 0.5),
    ({"target": 4, "unit": "tokens"}, "whatever", [[5, 6, 7]], 0.75),
])
def test_length(options, completion, ids, expected):
    assert run(builtin("length", **options), [completion], ids=ids) == [expected]


@pytest.mark.parametrize("options, completion, expected", [
    ({"pattern": r"^<think>.*?</think><answer>.*?</answer>$"}, "<think>a\nb</think><answer>1</answer>", 1.0),
    ({"pattern": r"^<think>.*?</think><answer>.*?</answer>$"}, "<think>a</think> 1", 0.0),
    ({"pattern": r"\d+"}, "it is 42", 1.0),                                    # search: anywhere
    ({"pattern": r"\d+", "mode": "match"}, "it is 42", 0.0),                   # match: at the start
    ({"pattern": r"\d+", "mode": "fullmatch"}, "42", 1.0),
    ({"pattern": r"answer", "flags": "i"}, "ANSWER", 1.0),
    ({"pattern": r"answer", "flags": ""}, "ANSWER", 0.0),
])
def test_format(options, completion, expected):
    assert run(builtin("format", **options), [completion]) == [expected]


@pytest.mark.parametrize("ngram, ids, expected", [
    (1, [5, 6, 5, 5], [0, 0, -1, -1]),                          # a token seen before
    (2, [5, 6, 5, 6, 5, 6], [0, 0, 0, -1, -1, -1]),             # (5,6) at t=3, (6,5) at t=4, (5,6) at t=5
    (3, [1, 2, 3, 1, 2, 3, 4], [0, 0, 0, 0, 0, -1, 0]),
    (2, [], []),
])
def test_repetition_by_hand(ngram, ids, expected):
    reward = builtin("repetition", ngram=ngram, penalty=1.0)
    assert reward.level == TOKEN
    assert run(reward, ["x"], ids=[ids]) == [[float(x) for x in expected]]
    half = builtin("repetition", ngram=ngram, penalty=0.5)
    assert run(half, ["x"], ids=[ids]) == [[x / 2 for x in expected]]


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


def test_a_missing_optional_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)        # import sacrebleu now fails
    with pytest.raises(RewardError, match=r"reward bleu: this reward needs the sacrebleu package: "
                                          r"pip install sacrebleu \(or pip install 'tokrl\[rewards\]'\)"):
        build_reward({"name": "bleu"})


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
