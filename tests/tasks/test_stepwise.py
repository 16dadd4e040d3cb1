"""Stepwise multi-step arithmetic: the texts and labels by hand, the split by question,
seeding, and `tokrl reward-model steps-data` writing TRL's stepwise format."""

from __future__ import annotations

import json

import pytest

from tokrl.tasks.stepwise import StepsDataConfig, generate, question_text, solve, step_text

from ..offline.helpers import cli

OPS = [("add", 5), ("multiply", 2), ("subtract", 9)]


def test_question_and_steps_by_hand():
    assert question_text(7, OPS) == "start at 7; add 5; double it; subtract 9"
    assert question_text(1, [("multiply", 3)]) == "start at 1; triple it"
    assert step_text(12, ("multiply", 2), 24) == "12 * 2 = 24"
    # 7 + 5 = 12, 12 * 2 = 24, 24 - 9 = 15
    assert solve(7, OPS) == (["7 + 5 = 12", "12 * 2 = 24", "24 - 9 = 15"], [True, True, True])


def test_a_planted_error_carries_on_and_every_later_step_is_false():
    # step 1 is off by -3: 12 * 2 = 21; the next step continues from 21: 21 - 9 = 12
    assert solve(7, OPS, wrong_at=1, delta=-3) == (["7 + 5 = 12", "12 * 2 = 21", "21 - 9 = 12"],
                                                   [True, False, False])
    assert solve(7, OPS, wrong_at=0, delta=2)[1] == [False, False, False]
    with pytest.raises(ValueError, match="nonzero delta"):
        solve(7, OPS, wrong_at=1, delta=0)


def _replay(row) -> list[bool]:
    """Whether each step's arithmetic is right, read back from its text."""
    symbols = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    out = []
    for step in row["completions"]:
        a, op, b, _, result = step.split(" ")
        out.append(symbols[op](int(a), int(b)) == int(result))
    return out


def test_generate_splits_by_question_and_labels_follow_the_convention():
    cfg = StepsDataConfig(questions=50, solutions=3, error_rate=0.5, test_fraction=0.2, seed=4)
    train, test = generate(cfg)
    assert (len(train), len(test)) == (40 * 3, 10 * 3)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    for row in train + test:
        assert set(row) == {"prompt", "completions", "labels"}
        assert len(row["labels"]) == len(row["completions"]) == row["prompt"].count(";")
        right = _replay(row)
        first = right.index(False) if False in right else len(right)
        assert right[first + 1:] == [True] * (len(right) - first - 1)     # one planted error at most
        assert row["labels"] == [k < first for k in range(len(right))]     # false from the first wrong on
    assert any(not all(r["labels"]) for r in train) and any(all(r["labels"]) for r in train)
    assert generate(cfg) == (train, test)                                 # seeded
    assert generate(StepsDataConfig(questions=50, seed=5)) != generate(StepsDataConfig(questions=50, seed=4))
    assert all(all(r["labels"]) for r in sum(generate(StepsDataConfig(questions=20, error_rate=0.0)), []))


def test_impossible_options_are_refused():
    with pytest.raises(ValueError, match="distinct questions"):
        generate(StepsDataConfig(questions=1000, min_ops=1, max_ops=1))   # 20 starts x 20 operations: 400
    with pytest.raises(ValueError, match="min ops"):
        generate(StepsDataConfig(min_ops=3, max_ops=2))
    with pytest.raises(ValueError, match="operations must be some of add, subtract, multiply, got divide"):
        generate(StepsDataConfig(kinds=("divide",)))


def test_the_question_space_bounds_what_is_drawn():
    # additions and subtractions of 1..3 from a start of 1..4: no "double it", nothing larger
    train, test = generate(StepsDataConfig(questions=40, kinds=("add", "subtract"), max_start=4, max_operand=3,
                                           min_ops=2, max_ops=2, error_rate=0.0))
    for row in train + test:
        words = row["prompt"].split("; ")
        assert len(words) == 3 and 1 <= int(words[0].removeprefix("start at ")) <= 4
        assert all(w.split()[0] in ("add", "subtract") and 1 <= int(w.split()[1]) <= 3 for w in words[1:])


def test_steps_data_command_writes_both_splits(tmp_path):
    out = tmp_path / "steps"
    status, stdout, _ = cli(["reward-model", "steps-data", str(out), "--questions", "30", "--solutions", "2",
                             "--seed", "1"])
    assert status == 0
    summary = json.loads(stdout)
    assert (summary["train_solutions"], summary["test_solutions"], summary["test_questions"]) == (48, 12, 6)
    rows = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and isinstance(rows[0]["labels"][0], bool)
    before = (out / "train.jsonl").read_bytes()
    status, stdout, stderr = cli(["reward-model", "steps-data", str(out), "--questions", "10"])
    assert status == 2 and stdout == "" and "already holds" in stderr and stderr.count("\n") == 1
    assert (out / "train.jsonl").read_bytes() == before
    status, _, stderr = cli(["reward-model", "steps-data", str(tmp_path / "new"), "--error-rate", "2"])
    assert status == 2 and "error rate" in stderr and not (tmp_path / "new").exists()
