"""calculator: arithmetic with a tool. The policy may write ``<calc>EXPRESSION</calc>``; the
environment answers with the value (a safe evaluator, never ``eval``); a turn without a
call is the final answer, paid 1.0 when it is exactly the right number.

The evaluator walks the expression's syntax tree and admits only numbers, + - * / // %
** and parentheses, with bounded operand sizes and work: ``9**9**9`` is refused, not
computed. The task writes tool-use demonstrations from its train split
(``demonstration``: the call, the environment's answer, the number), which the
supervised warm start fits before RL.
"""

from __future__ import annotations

import ast
import math
import operator
import random
import re
from typing import Any

from tokrl.tasks.base import Environment, Example

MAX_EXPRESSION = 100
"""characters of an expression"""
MAX_NODES = 40
"""syntax-tree nodes of an expression"""
MAX_BITS = 128
"""bits of any operand or result (|x| < 2**128)"""
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_CALL = re.compile(r"<calc>(.*?)</calc>", re.S)
_INT = re.compile(r"-?\d+")


def _bits(x: int | float) -> float:
    return math.log2(abs(x)) + 1 if x else 0.0


def _check(x):
    if isinstance(x, complex):
        raise ValueError("the result is not a real number")
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError("the result is not a finite number")
    if _bits(x) > MAX_BITS:
        raise ValueError("a number is too large")
    return x


def _eval(node):
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and (abs(b) > MAX_BITS or (abs(a) > 1 and b * math.log2(abs(a)) > MAX_BITS)):
            raise ValueError("a power is too large")       # checked before computing it
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and b == 0:
            raise ValueError("division by zero")
        return _check(_BINARY[type(node.op)](a, b))
    raise ValueError(f"{type(node).__name__} is not allowed (numbers, + - * / // % ** and parentheses only)")


def safe_eval(expression: str) -> int | float:
    """The value of an arithmetic expression, or ValueError saying why it is refused."""
    if len(expression) > MAX_EXPRESSION:
        raise ValueError("the expression is too long")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ValueError("the expression is too long")
    return _eval(tree.body)


def show(value: int | float) -> str:
    """A value as the environment writes it: integers exactly, other numbers to 6 significant digits."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:.6g}"


class Calculator(Environment):
    name = "calculator"
    stop = ("</calc>",)

    def __init__(self, digits: int = 2, num_train: int = 1000, num_test: int = 64, seed: int = 0,
                 template: str = ("What is {a} * {b}? You may write <calc>EXPRESSION</calc> and the result will be "
                                  "shown to you. Answer with only the number.")):
        if not 1 <= digits <= 4:
            raise ValueError("calculator digits must lie in 1..4")
        lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
        pairs = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
        if len(pairs) <= num_test:
            raise ValueError(f"only {len(pairs)} distinct questions with {digits} digit(s): lower num_test")
        random.Random(seed).shuffle(pairs)
        self.template = template
        # the test split never shares a question with the train split
        self._splits = {"test": [self._example(a, b) for a, b in pairs[:num_test]],
                        "train": [self._example(a, b) for a, b in pairs[num_test:num_test + num_train]]}
        self.answer = ""

    def _example(self, a: int, b: int) -> Example:
        return {"prompt": self.template.format(a=a, b=b), "a": a, "b": b, "answer": str(a * b)}

    def examples(self, split: str) -> list[Example]:
        return self._splits[split]

    def reset(self, example: Example) -> str:
        self.answer = example["answer"]
        return example["prompt"]

    def step(self, turn: str) -> tuple[str | None, float, bool, dict[str, Any]]:
        call = _CALL.search(turn)
        if call is not None:
            try:
                return show(safe_eval(call.group(1))), 0.0, False, {}
            except ValueError as e:
                return f"error: {e}", 0.0, False, {}
        text = turn.strip()
        text = text[:-1].rstrip() if text.endswith(".") else text
        return None, 1.0 if text == self.answer else 0.0, True, {}

    def demonstration(self, example: Example) -> list[str]:
        """The call, the environment's answer, the number."""
        return [f"<calc>{example['a']} * {example['b']}</calc>", example["answer"], example["answer"]]
