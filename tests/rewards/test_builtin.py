"""Every built-in reward on hand-checked inputs, and the optional packages they need."""

from __future__ import annotations

import math
import sys
import threading

import pytest

from tokrl.rewards import TOKEN, RewardError, build_reward

from .helpers import builtin, run


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


def test_a_missing_optional_package_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)        # import sacrebleu now fails
    with pytest.raises(RewardError, match=r"reward bleu: this reward needs the sacrebleu package: "
                                          r"pip install sacrebleu \(or pip install 'tokrl\[rewards\]'\)"):
        build_reward({"name": "bleu"})
