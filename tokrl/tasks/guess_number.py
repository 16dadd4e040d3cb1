"""guess_number: the environment holds a number in 1..n; the policy guesses, the environment
answers "higher", "lower" or ends the episode on the right number.

A turn's guess is its first integer; a turn without one is answered "say a number".
The right guess at turn k pays 1 - penalty * (k - 1) (at least 0), so finishing in
few turns pays most; nothing else pays. Observations are short text (" higher:"), which
the character tokenizer of the tiny models can write, so the tiny model learns the game
in the test suite.
"""

from __future__ import annotations

import random
import re
from typing import Any

from tokrl.tasks.base import Environment, Example

_INT = re.compile(r"-?\d+")


class GuessNumber(Environment):
    name = "guess_number"

    def __init__(self, n: int = 8, penalty: float = 0.1, num_train: int = 512, num_test: int = 64, seed: int = 0,
                 template: str = "guess a number from 1 to {n}:"):
        if n < 2:
            raise ValueError("guess_number needs n >= 2")
        if not 0.0 <= penalty <= 1.0:
            raise ValueError("guess_number penalty must lie in [0, 1]")
        self.n, self.penalty, self.template = n, penalty, template
        rng = random.Random(seed)
        self._splits = {"train": [self._example(rng.randint(1, n)) for _ in range(num_train)],
                        "test": [self._example(1 + i % n) for i in range(num_test)]}
        self.secret, self.turns = 0, 0

    def _example(self, secret: int) -> Example:
        return {"prompt": self.template.format(n=self.n), "secret": secret}

    def examples(self, split: str) -> list[Example]:
        return self._splits[split]

    def reset(self, example: Example) -> str:
        self.secret, self.turns = int(example["secret"]), 0
        return example["prompt"]

    def step(self, turn: str) -> tuple[str | None, float, bool, dict[str, Any]]:
        self.turns += 1
        found = _INT.search(turn)
        if found is None:
            return " say a number:", 0.0, False, {}
        guess = int(found.group())
        if guess == self.secret:
            return None, max(0.0, 1.0 - self.penalty * (self.turns - 1)), True, {"turns": self.turns}
        return (" higher:" if guess < self.secret else " lower:"), 0.0, False, {}

    def demonstration(self, example: Example) -> list[str]:
        """Binary search: each guess the middle of what is left, each answer the environment's."""
        lo, hi, secret, out = 1, self.n, int(example["secret"]), []
        while True:
            guess = (lo + hi) // 2
            out.append(str(guess))
            if guess == secret:
                return out
            out.append(" higher:" if guess < secret else " lower:")
            lo, hi = (guess + 1, hi) if guess < secret else (lo, guess - 1)
