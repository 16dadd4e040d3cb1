"""step_match: the exact step checker of multi-step arithmetic, as a dense reward.

The ground truth a process reward model (``tokrl.rewards.steps``) can at best learn:
the completion is split into steps on ``separator`` (``split_steps``), and step k is
right when it is the k-th step of the right solution, written ``a op b = c``: it
applies the question's k-th operation to the previous right value and states the
right result. By the stepwise convention of the PRM's data (``tokrl.tasks.stepwise``)
a step after the first wrong one is wrong, and so is every step beyond the last
operation. A right step earns 1.0 and a wrong one 0.0, on the policy token that
writes the step's last character (``pay_steps``, as the PRM reward pays); with
``differences`` step k earns v_k − v_{k−1} (v_0 = 0), so the return telescopes to
the last step's verdict.

The right steps come from a data column (default ``steps``: the list of the right
solution's steps, which the ``stepwise`` task provides), not from parsing the
prompt: a reward here reads data, never a task's private format, and any table with
reference steps (``prompts`` task) can use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tokrl.rewards.base import TOKEN
from tokrl.rewards.shaping import shape
from tokrl.rewards.steps import pay_steps, split_steps

STEP = re.compile(r"\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*")
"""one step: ``12 * 2 = 24`` (spaces optional, values may be negative)"""

Step = tuple[int, str, int, int]


def parse_step(text: str) -> Step | None:
    """(a, op, b, c) of a step ``a op b = c``; None for anything else.

    >>> parse_step(" 12 * 2 = 24"), parse_step("12 * 2 = 24, so")
    ((12, '*', 2, 24), None)
    """
    m = STEP.fullmatch(text)
    return None if m is None else (int(m[1]), m[2], int(m[3]), int(m[4]))


def judge_steps(reference: list[str], written: list[str]) -> list[bool]:
    """Per written step, right (True) or wrong: step k is right when steps 1..k each equal
    the reference's step of the same index (as parsed ``a op b = c``); there is no right
    step past the reference's last. Raises ValueError for a reference step that does not parse.

    >>> judge_steps(["7 + 5 = 12", "12 * 2 = 24"], ["7 + 5 = 12", "12 * 2 = 25", "25 - 1 = 24"])
    [True, False, False]
    """
    expected = []
    for step in reference:
        parsed = parse_step(step) if isinstance(step, str) else None
        if parsed is None:
            raise ValueError(f"reference step {step!r} is not of the form 'a op b = c' (e.g. '7 + 5 = 12')")
        expected.append(parsed)
    verdicts, right = [], True
    for k, text in enumerate(written):
        right = right and k < len(expected) and parse_step(text) == expected[k]
        verdicts.append(right)
    return verdicts


def step_match(tokenizer, column: str = "steps", separator: str = "\n", differences: bool = False
               ) -> Callable[..., list[list[float]]]:
    """Token level: 1.0 / 0.0 per step of the completion (right / wrong, ``judge_steps``
    against the list of right steps in ``column``) on the token that writes the step's last
    character; with ``differences`` the change from the step before."""
    if not separator:
        raise ValueError("step_match: the step separator must not be empty")

    def reward(completions: list[str], completion_ids: list[list[int]], **columns) -> list[list[float]]:
        out = []
        for text, ids, reference in zip(completions, completion_ids, columns[column]):
            if not isinstance(reference, (list, tuple)):
                raise ValueError(f"column {column!r} must hold a list of steps per example, got {reference!r}")
            spans = split_steps(text, separator)
            verdicts = [float(v) for v in judge_steps(list(reference), [text[a:b] for a, b in spans])]
            out.append(pay_steps(tokenizer, ids, spans, shape(verdicts) if differences else verdicts))
        return out

    reward.__name__ = reward.__qualname__ = "step_match"
    reward.columns, reward.level = (column,), TOKEN     # type: ignore[attr-defined]
    return reward
