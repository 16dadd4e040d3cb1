"""target_match: the worked example of token-level RL.

Given an input sequence, produce its target sequence. The score of a (partial)
completion is the fraction of target positions it matches, and tokens are paid by
potential-based shaping of that score (``tokrl.rewards.shaping``): token t earns
1/len(target) when it equals the target token at position t, so an episode's
return is the fraction of positions matched; the episode ends at the target
length. The target is the input transformed (copied, reversed, or each symbol
shifted to the next one in the alphabet).
"""

from __future__ import annotations

import random
from itertools import accumulate

from tokrl.rewards.shaping import shape
from tokrl.tasks.base import Example, Task

TRANSFORMS = {
    "copy": lambda s: s,
    "reverse": lambda s: s[::-1],
}


class TargetMatch(Task):
    name = "target_match"

    def __init__(self, tokenizer, alphabet: str = "abcdefgh", length: int = 4,
                 transform: str = "copy", num_train: int = 512, num_test: int = 64,
                 template: str = "{input}=", seed: int = 0):
        if transform not in TRANSFORMS and transform != "shift":
            raise ValueError(f"unknown transform {transform!r}; choose copy, reverse or shift")
        if length < 1 or len(alphabet) < 2:
            raise ValueError("target_match needs length >= 1 and an alphabet of >= 2 symbols")
        self.tokenizer = tokenizer
        self.alphabet, self.length, self.transform, self.template = alphabet, length, transform, template
        rng = random.Random(seed)
        # distinct inputs; the test split never overlaps the train split
        seen: set[str] = set()
        total = min(num_train + num_test, len(alphabet) ** length)
        if total <= num_test:
            raise ValueError(f"target_match has only {len(alphabet) ** length} distinct inputs of length {length}: "
                             f"lower num_test ({num_test}) or raise length or the alphabet")
        while len(seen) < total:
            seen.add("".join(rng.choice(alphabet) for _ in range(length)))
        inputs = sorted(seen)
        rng.shuffle(inputs)
        self._splits = {"test": [self._example(s) for s in inputs[:num_test]],
                        "train": [self._example(s) for s in inputs[num_test:]]}

    def _target(self, s: str) -> str:
        if self.transform == "shift":
            a = self.alphabet
            return "".join(a[(a.index(c) + 1) % len(a)] for c in s)
        return TRANSFORMS[self.transform](s)

    def _example(self, s: str) -> Example:
        target = self._target(s)
        ids = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        return {"prompt": self.template.format(input=s), "target": target, "target_ids": ids}

    def examples(self, split: str) -> list[Example]:
        return self._splits[split]

    def max_tokens(self, example: Example) -> int:
        return len(example["target_ids"])

    def token_rewards(self, examples: list[Example], completions: list[list[int]]) -> list[list[float]]:
        out = []
        for ex, ids in zip(examples, completions):
            target = ex["target_ids"]
            # Φ(y_<=t) = matched positions among the first t tokens / len(target). The
            # integer counts are shaped and then scaled, so each reward is exactly
            # 1/len(target) or 0 (differences of k/n floats can be off in the last bit)
            matched = accumulate(int(t < len(target) and tok == target[t]) for t, tok in enumerate(ids))
            out.append([r / len(target) for r in shape(list(matched))])
        return out
