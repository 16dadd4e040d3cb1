"""A user environment in ~30 lines: guess a hidden two-letter word over several turns.

    tokrl train configs/guess_number.yaml task.name=examples/letters.py:Letters task.options={}
"""
import itertools

from tokrl.env import Environment


class Letters(Environment):
    name = "letters"

    def __init__(self, alphabet: str = "abcd", tries: int = 4):
        self.words = ["".join(p) for p in itertools.product(alphabet, repeat=2)]
        self.tries, self.word, self.turn = tries, "", 0

    def examples(self, split: str) -> list[dict]:
        return [{"prompt": "guess my word:", "word": w} for w in self.words]

    def reset(self, example: dict) -> str:
        self.word, self.turn = example["word"], 0          # self.rng is seeded by tokrl, if you need it
        return example["prompt"]

    def step(self, turn: str):
        self.turn += 1
        guess = turn.strip()[:2]
        right = sum(a == b for a, b in zip(guess, self.word))
        if right == 2:
            return None, 1.0 / self.turn, True, {}       # found: more for fewer turns
        if self.turn == self.tries:
            return None, 0.0, True, {}
        return f" {right} right:", 0.0, False, {}       # the next observation
