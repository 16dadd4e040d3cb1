"""Stepwise data you can regenerate: multi-step arithmetic with planted wrong steps.

A question is a start value and a chain of operations, written as
``start at 7; add 5; double it; subtract 9``. A solution writes every
intermediate result as one step (``7 + 5 = 12``, ``12 * 2 = 24``, ``24 - 9 = 15``).
A solution with an error gets one wrong result planted at a random step; the
steps after it carry on correctly from the wrong value, and, by the usual
stepwise convention, every step from the first wrong one on is labelled false.

Rows are in TRL's stepwise-supervision format: ``prompt`` (the question),
``completions`` (the list of steps) and ``labels`` (one bool per step). The
held-out split is by question, never by step or solution: all the solutions of a
question land in the same split, and no question is in both.

    tokrl reward-model steps-data data/steps --questions 600 --seed 0
"""

from __future__ import annotations

import random
from dataclasses import dataclass

Operation = tuple[str, int]
"""(kind, operand): ("add", 5), ("subtract", 9), ("multiply", 2)"""

WORDS = {("multiply", 2): "double it", ("multiply", 3): "triple it"}
SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*"}


def apply(value: int, op: Operation) -> int:
    kind, n = op
    return value + n if kind == "add" else value - n if kind == "subtract" else value * n


def question_text(start: int, ops: list[Operation]) -> str:
    """``start at 7; add 5; double it; subtract 9``"""
    parts = [f"start at {start}"] + [WORDS.get(op, f"{op[0]} {op[1]}") for op in ops]
    return "; ".join(parts)


def step_text(value: int, op: Operation, result: int) -> str:
    """``12 * 2 = 24``"""
    return f"{value} {SYMBOLS[op[0]]} {op[1]} = {result}"


def solve(start: int, ops: list[Operation], wrong_at: int | None = None, delta: int = 0
          ) -> tuple[list[str], list[bool]]:
    """(steps, labels) of one solution. With ``wrong_at`` = k, step k's result is off by
    ``delta`` (nonzero) and later steps continue from it; labels are True before step k
    and False from step k on."""
    if wrong_at is not None and (delta == 0 or not 0 <= wrong_at < len(ops)):
        raise ValueError("a planted error needs a step index within the solution and a nonzero delta")
    steps, labels, value = [], [], start
    for i, op in enumerate(ops):
        result = apply(value, op) + (delta if i == wrong_at else 0)
        steps.append(step_text(value, op, result))
        labels.append(wrong_at is None or i < wrong_at)
        value = result
    return steps, labels


KINDS = ("add", "subtract", "multiply")


@dataclass
class QuestionSpace:
    """Which questions are drawn: how many operations, of which kinds, from which numbers.
    A multiplication multiplies by 2 or 3 ("double it", "triple it")."""

    min_ops: int = 2
    """fewest operations (= steps) in a question"""
    max_ops: int = 4
    """most operations (= steps) in a question"""
    kinds: tuple[str, ...] = KINDS
    """the kinds of operation drawn (some of add, subtract, multiply)"""
    max_start: int = 20
    """the start value is drawn from 1..max_start"""
    max_operand: int = 9
    """an addition's or subtraction's operand is drawn from 1..max_operand"""

    def check(self) -> None:
        for ok, message in [(1 <= self.min_ops <= self.max_ops, "need 1 <= min ops <= max ops"),
                            (bool(self.kinds) and set(self.kinds) <= set(KINDS),
                             f"operations must be some of {', '.join(KINDS)}, got {', '.join(self.kinds) or 'none'}"),
                            (self.max_start >= 1 and self.max_operand >= 1, "max start and max operand must be >= 1")]:
            if not ok:
                raise ValueError(message)

    def draw(self, rng: random.Random) -> tuple[int, list[Operation]]:
        """(start, operations) of one random question."""
        ops = []
        for _ in range(rng.randint(self.min_ops, self.max_ops)):
            kind = rng.choice(self.kinds)
            ops.append((kind, rng.choice([2, 3]) if kind == "multiply" else rng.randint(1, self.max_operand)))
        return rng.randint(1, self.max_start), ops


@dataclass
class StepsDataConfig(QuestionSpace):
    questions: int = 600
    """distinct questions (each has ``solutions`` solutions)"""
    solutions: int = 2
    """solutions per question"""
    error_rate: float = 0.5
    """chance that a solution has a planted wrong step"""
    test_fraction: float = 0.2
    """share of questions held out (with all their solutions)"""
    seed: int = 0
    """seeds the questions, the planted errors and the split"""

    def validate(self) -> None:
        for ok, message in [(self.questions >= 2, "questions must be >= 2 (one to train on, one held out)"),
                            (self.solutions >= 1, "solutions must be >= 1"),
                            (0.0 <= self.error_rate <= 1.0, "error rate must lie in [0, 1]"),
                            (0.0 < self.test_fraction < 1.0, "test fraction must lie in (0, 1)")]:
            if not ok:
                raise ValueError(message)
        self.check()


def distinct_questions(rng: random.Random, n: int, space: QuestionSpace) -> dict[str, tuple[int, list[Operation]]]:
    """``n`` distinct questions {text: (start, operations)}, in the order ``rng`` drew them."""
    space.check()
    questions: dict[str, tuple[int, list[Operation]]] = {}
    tries = 0
    while len(questions) < n:
        tries += 1
        if tries > 100 * n:
            raise ValueError(f"could not find {n} distinct questions with {space.min_ops}-{space.max_ops} "
                             "operations; ask for fewer or allow more operations or larger numbers")
        start, ops = space.draw(rng)
        questions.setdefault(question_text(start, ops), (start, ops))
    return questions


def generate(cfg: StepsDataConfig) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows): ``cfg.questions`` distinct questions, split by question."""
    cfg.validate()
    rng = random.Random(cfg.seed)
    questions = distinct_questions(rng, cfg.questions, cfg)
    order = list(questions)                     # insertion order: seeded
    rng.shuffle(order)
    n_test = min(max(round(cfg.test_fraction * len(order)), 1), len(order) - 1)
    rows = {}
    for prompt in order:
        start, ops = questions[prompt]
        rows[prompt] = []
        for _ in range(cfg.solutions):
            wrong_at, delta = None, 0
            if rng.random() < cfg.error_rate:
                wrong_at, delta = rng.randrange(len(ops)), rng.choice([-1, 1]) * rng.randint(1, 5)
            steps, labels = solve(start, ops, wrong_at, delta)
            rows[prompt].append({"prompt": prompt, "completions": steps, "labels": labels})
    test = [r for p in order[:n_test] for r in rows[p]]
    train = [r for p in order[n_test:] for r in rows[p]]
    return train, test
