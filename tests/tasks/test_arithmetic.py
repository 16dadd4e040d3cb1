"""The arithmetic task: scoring and splits."""

from __future__ import annotations

import pytest

from tokrl.tasks import Arithmetic


def test_arithmetic_scores_exact_partial_and_wrong(tokenizer):
    task = Arithmetic(tokenizer, num_train=10, num_test=5)
    # exact, with spaces and one trailing period allowed
    assert task.score("8", "8") == 1.0 and task.score("8", " 8. ") == 1.0
    # right number in the wrong format: the last integer decides
    assert task.score("8", "3 + 5 = 8") == 0.5 and task.score("8", "The answer is 8.") == 0.5
    # wrong: another last number, no number, or a number that only contains the answer
    assert task.score("8", "8 + 0 = 9") == 0.0 and task.score("8", "eight") == 0.0
    assert task.score("8", "18") == 0.0
    assert task.sequence_rewards([{"answer": "12"}, {"answer": "3"}], ["12", "so 3"]) == [1.0, 0.5]


def test_arithmetic_splits_are_disjoint_and_answers_right(tokenizer):
    task = Arithmetic(tokenizer, op="*", digits=2, num_train=200, num_test=20, seed=3)
    train, test = task.examples("train"), task.examples("test")
    assert len(train) == 200 and len(test) == 20
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    a, b = [int(x) for x in test[0]["prompt"].split("?")[0].split("What is ")[1].split(" * ")]
    assert test[0]["answer"] == str(a * b) and 10 <= a <= 99
    with pytest.raises(ValueError, match="unknown op"):
        Arithmetic(tokenizer, op="/")
    with pytest.raises(ValueError, match="num_test"):
        Arithmetic(tokenizer, digits=1, num_test=100)


def test_the_demonstration_is_the_number_alone_and_scores_full_marks(tokenizer):
    task = Arithmetic(tokenizer, num_train=10, num_test=5)
    for example in task.examples("train"):
        assert task.demonstration(example) == example["answer"]
        assert task.score(example["answer"], task.demonstration(example)) == 1.0
