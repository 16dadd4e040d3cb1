"""stepwise: multi-step arithmetic as an RL task, the questions of the PRM's data.

A prompt is exactly a question of ``tokrl.tasks.stepwise`` (``start at 7; add 5;
double it; subtract 9``), the text a process reward model trained on that data
reads as its prompt; the expected completion writes one step per line
(``7 + 5 = 12``, ``12 * 2 = 24``, ``24 - 9 = 15``). The outcome reward is 1.0 when
the last integer of the completion's last non-blank step is the final value, else
0.0; logged as ``rewards/outcome``. ``rewards`` adds any rewards of a recipe beside
it (a PRM ``{reward_model: DIR, level: step}``, the exact checker ``{name:
step_match}``), which read the example's columns ``answer`` (the final value) and
``steps`` (the right solution's steps). The held-out split is by question.
"""

from __future__ import annotations

import random
import re
from typing import Any

from tokrl.rewards.base import Reward
from tokrl.rewards.spec import build_rewards
from tokrl.rewards.steps import split_steps
from tokrl.tasks.base import Example
from tokrl.tasks.prompts import RewardsTask
from tokrl.tasks.stepwise import KINDS, Operation, QuestionSpace, apply, distinct_questions, solve

_INT = re.compile(r"-?\d+")


def final_answer(text: str, separator: str = "\n") -> str | None:
    """The last integer of the last non-blank step of ``text``, or None.

    >>> final_answer("7 + 5 = 12\\n12 * 2 = 24\\n\\n"), final_answer("no number")
    ('24', None)
    """
    spans = split_steps(text, separator)
    numbers = _INT.findall(text[spans[-1][0]:spans[-1][1]]) if spans else []
    return numbers[-1] if numbers else None


class Stepwise(RewardsTask):
    name = "stepwise"

    def __init__(self, tokenizer, min_ops: int = 3, max_ops: int = 4, ops: list[str] | None = None,
                 max_start: int = 20, max_operand: int = 9, num_train: int = 1000, num_test: int = 64,
                 separator: str = "\n", rewards: list[dict[str, Any]] | None = None, seed: int = 0):
        if not 1 <= min_ops <= max_ops:
            raise ValueError(f"stepwise: need 1 <= min_ops <= max_ops, got {min_ops} and {max_ops}")
        space = QuestionSpace(min_ops, max_ops, tuple(ops or KINDS), max_start, max_operand)
        try:
            space.check()
        except ValueError as e:
            raise ValueError(f"stepwise: {e}") from None
        if num_train < 1 or num_test < 1:
            raise ValueError("stepwise: num_train and num_test must be >= 1")
        if not separator:
            raise ValueError("stepwise: the step separator must not be empty")
        self.tokenizer, self.separator = tokenizer, separator
        rng = random.Random(seed)
        questions = distinct_questions(rng, num_train + num_test, space)
        order = list(questions)
        rng.shuffle(order)
        # split by question: no test question is in train
        self._splits = {"test": [self._example(q, *questions[q]) for q in order[:num_test]],
                        "train": [self._example(q, *questions[q]) for q in order[num_test:]]}
        self.columns = ["answer", "steps"]
        outcome = Reward(name="outcome", fn=self.outcome, columns=("answer",))
        extra = build_rewards(rewards, tokenizer) if rewards else []
        if any(r.name == "outcome" for r in extra):
            raise ValueError("stepwise: a reward in task.options.rewards is logged as 'outcome', the task's own; "
                             "give it another label")
        self.set_rewards([outcome, *extra], "the stepwise task")

    @staticmethod
    def _example(question: str, start: int, ops: list[Operation]) -> Example:
        value = start
        for op in ops:
            value = apply(value, op)
        return {"prompt": question, "answer": str(value), "steps": solve(start, ops)[0]}

    def examples(self, split: str) -> list[Example]:
        return self._splits[split]

    def demonstration(self, example: Example) -> str:
        """The right steps, one per line (joined by the separator)."""
        return self.separator.join(example["steps"])

    def outcome(self, completions: list[str], answer: list[str]) -> list[float]:
        """1.0 where the last integer of the last non-blank step is the answer, else 0.0."""
        return [float(final_answer(text, self.separator) == gold) for text, gold in zip(completions, answer)]
