"""calculator: the safe evaluator's answers and refusals, the environment's turns, and its
tool-use demonstrations (tokrl/tasks/calculator.py)."""

from __future__ import annotations

import time

import pytest

from tokrl.tasks.calculator import Calculator, safe_eval


@pytest.mark.parametrize("expression, value", [("37 * 48", 1776), ("(3 + 4) ** 2", 49), ("-7 // 2", -4),
                                               ("7 / 2", 3.5), ("10 % 4", 2), ("2 ** 100", 2 ** 100)])
def test_the_evaluator_computes_arithmetic(expression, value):
    assert safe_eval(expression) == value


@pytest.mark.parametrize("expression, why", [
    ("9**9**9", "a power is too large"),                 # refused before computing it
    ("2 ** 200", "a power is too large"),
    ("10**30 * 10**30", "a number is too large"),
    ("1 / 0", "division by zero"),
    ("(-8) ** 0.5", "not a real number"),
    ("__import__('os').system('true')", "Call is not allowed"),
    ("x + 1", "Name is not allowed"),
    ("1 +", "not an arithmetic expression"),
    ("1+" * 60 + "1", "too long"),
])
def test_the_evaluator_refuses_what_is_not_small_arithmetic(expression, why):
    start = time.perf_counter()
    with pytest.raises(ValueError, match=why):
        safe_eval(expression)
    assert time.perf_counter() - start < 0.1


def test_a_call_is_answered_and_a_turn_without_one_is_the_final_answer():
    env = Calculator(digits=2, num_test=8, num_train=16)
    example = env.examples("test")[0]
    a, b = example["a"], example["b"]
    assert env.reset(example) == example["prompt"] and "<calc>" in example["prompt"]
    assert env.step(f"let me see <calc>{a} * {b}</calc>") == (str(a * b), 0.0, False, {})
    assert env.step("<calc>9**9**9</calc>") == ("error: a power is too large", 0.0, False, {})
    assert env.step(f" {a * b}.") == (None, 1.0, True, {})
    env.reset(example)
    assert env.step(f"It is {a * b}") == (None, 0.0, True, {})    # exact answers only
    assert Calculator.stop == ("</calc>",)


def test_the_splits_share_no_question_and_the_demonstration_is_a_right_episode():
    env = Calculator(digits=2, num_test=64, num_train=256)
    test = {(e["a"], e["b"]) for e in env.examples("test")}
    assert len(test) == 64 and not test & {(e["a"], e["b"]) for e in env.examples("train")}
    example = env.examples("train")[0]
    call, answer, final = env.demonstration(example)
    env.reset(example)
    assert env.step(call) == (answer, 0.0, False, {}) and env.step(final) == (None, 1.0, True, {})
