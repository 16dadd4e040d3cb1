"""arithmetic: answer a small sum (or product) with only the number, checked exactly.

A completion scores 1.0 when, stripped of spaces and one trailing period, it is
exactly the answer; ``partial`` when its last integer is the answer but it says
more ("2 + 3 = 5": the right number, in the wrong format); 0 otherwise. The held-out metric is
the fraction answered exactly (``solved`` in evaluation).
"""

from __future__ import annotations

import random
import re

from tokrl.tasks.base import Example, Task

OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_INT = re.compile(r"-?\d+")


class Arithmetic(Task):
    name = "arithmetic"

    def __init__(self, tokenizer, op: str = "+", digits: int = 1, partial: float = 0.5,
                 num_train: int = 1000, num_test: int = 64,
                 template: str = "What is {a} {op} {b}? Answer with only the number.", seed: int = 0):
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}; choose one of {', '.join(OPS)}")
        if not 1 <= digits <= 6:
            raise ValueError("arithmetic digits must lie in 1..6")
        if not 0.0 <= partial <= 1.0:
            raise ValueError("arithmetic partial credit must lie in [0, 1]")
        self.op, self.partial, self.template = op, partial, template
        lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
        pairs = [(a, b) for a in range(lo, hi + 1) for b in range(lo, hi + 1)]
        if len(pairs) <= num_test:
            raise ValueError(f"only {len(pairs)} distinct questions with {digits} digit(s): lower num_test ({num_test})")
        rng = random.Random(seed)
        rng.shuffle(pairs)
        # the test split never shares a question with the train split
        test, train = pairs[:num_test], pairs[num_test:num_test + num_train]
        self._splits = {"test": [self._example(a, b) for a, b in test],
                        "train": [self._example(a, b) for a, b in train]}

    def _example(self, a: int, b: int) -> Example:
        return {"prompt": self.template.format(a=a, b=b, op=self.op), "answer": str(OPS[self.op](a, b))}

    def examples(self, split: str) -> list[Example]:
        return self._splits[split]

    def demonstration(self, example: Example) -> str:
        """The number alone: the completion that scores 1.0."""
        return example["answer"]

    def score(self, answer: str, completion: str) -> float:
        """1.0 exact, ``partial`` if the last integer is right, else 0.0."""
        text = completion.strip()
        if text.endswith("."):
            text = text[:-1].rstrip()
        if text == answer:
            return 1.0
        numbers = _INT.findall(completion)
        return self.partial if numbers and numbers[-1] == answer else 0.0

    def sequence_rewards(self, examples: list[Example], completions: list[str]) -> list[float]:
        return [self.score(ex["answer"], c) for ex, c in zip(examples, completions)]
