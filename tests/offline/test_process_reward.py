"""Process reward models: the loss and the held-out numbers by hand, TRL's stepwise format
from a hand-written file (and one separator-joined text, and Parquet), the split by
question, a saved directory that says it is step-level, and end to end: trained on a small
learnable stepwise set it finds the first wrong step on held-out solutions."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from tokrl.offline.process_reward import (
    HELDOUT_FILE,
    ProcessRewardConfig,
    first_wrong,
    fit,
    parse_solution,
    prepare,
    read_solutions,
    save,
    split_by_prompt,
    step_loss,
    step_metrics,
)
from tokrl.rewards.model import load_reward_model
from tokrl.tasks.data import write_jsonl

from .helpers import cli

COLUMNS = ("prompt", "completions", "labels")

# TRL's stepwise-supervision format as its documentation shows it, written by hand
TRL_FILE = (
    '{"prompt": "Which number is larger, 9.8 or 9.11?", "completions": ["The fractional part of 9.8 is 0.8, '
    'while the fractional part of 9.11 is 0.11.", "Since 0.11 is greater than 0.8, the number 9.11 is larger '
    'than 9.8."], "labels": [true, false]}\n'
    '{"prompt": "What is 2 + 3 * 4?", "completions": ["3 * 4 = 12", "2 + 12 = 14"], "labels": [true, true]}\n'
    '{"prompt": "What is 7 - 2?", "completions": ["7 - 2 = 4", "so 4"], "labels": [false, false]}\n'
)


def test_step_loss_by_hand():
    logits, labels = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    # label 1: -log σ(x); label 0: -log(1 - σ(x)) = log(1 + e^x)
    expected = (math.log(2) + math.log(1 + math.exp(2)) + math.log(1 + math.exp(-1))) / 3
    assert float(step_loss(logits, labels)) == pytest.approx(expected)


def test_first_wrong_and_held_out_numbers_by_hand():
    assert first_wrong([True, False, False]) == 1 and first_wrong([True, True]) is None
    logits = [[1.0, -1.0, -2.0], [0.5, 0.5], [-0.5, 1.0]]      # predicted right: TFF, TT, FT
    labels = [[True, False, False], [True, True], [True, True]]
    m = step_metrics(logits, labels, majority=True)
    # 6 of 7 steps agree (only the third solution's first step is wrong); 5 of 7 labels are true
    assert m["step_accuracy"] == pytest.approx(6 / 7) and m["majority_rate"] == pytest.approx(5 / 7)
    # first wrong found: solution 1 (step 1 = step 1), 2 (none = none); not 3 (step 0 vs none)
    assert m["first_error_found"] == pytest.approx(2 / 3)
    assert m["first_error_found_when_wrong"] == 1.0 and m["all_right_when_right"] == 0.5
    assert (m["n_steps"], m["n_solutions"], m["n_solutions_wrong"]) == (7, 3, 1)


def test_trl_format_loads_unchanged(tmp_path):
    path = tmp_path / "trl.jsonl"
    path.write_text(TRL_FILE)
    solutions = read_solutions(path, COLUMNS, "\n")
    assert solutions[0] == ("Which number is larger, 9.8 or 9.11?",
                            ["The fractional part of 9.8 is 0.8, while the fractional part of 9.11 is 0.11.",
                             "Since 0.11 is greater than 0.8, the number 9.11 is larger than 9.8."], [True, False])
    assert [s[2] for s in solutions] == [[True, False], [True, True], [False, False]]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([json.loads(line) for line in TRL_FILE.splitlines()]),
                   tmp_path / "trl.parquet")
    assert read_solutions(tmp_path / "trl.parquet", COLUMNS, "\n") == solutions


def test_one_separator_joined_text_and_bad_rows():
    row = {"prompt": "p", "completions": "a = 1\nb = 2", "labels": [1, 0]}
    assert parse_solution(row, COLUMNS, "\n", "x") == ("p", ["a = 1", "b = 2"], [True, False])
    for bad, message in [({"completions": ["a", "b"], "labels": [True]}, "2 steps in 'completions' but 1 labels"),
                         ({"completions": "a\nb\nc", "labels": [True]}, "3 steps"),
                         ({"completions": ["a"], "labels": ["yes"]}, "list of booleans"),
                         ({"completions": ["a", ""], "labels": [True, True]}, "no step may be empty"),
                         ({"completions": [1, 2], "labels": [True, True]}, "list of step texts")]:
        with pytest.raises(ValueError, match=message):
            parse_solution({"prompt": "p", **bad}, COLUMNS, "\n", "data.jsonl: row 3")


def test_split_by_prompt_keeps_a_question_together():
    solutions = [(f"q{i % 10}", ["a"], [True]) for i in range(40)]        # 10 questions, 4 solutions each
    train, test = split_by_prompt(solutions, 0.2, seed=0)
    assert len(test) == 8 and len(train) == 32
    assert not {s[0] for s in train} & {s[0] for s in test}


# ---------------------------------------------------------------- a learnable stepwise set

def letter_steps(n: int, seed: int = 0) -> list[dict]:
    """Solutions of 2-4 steps of 2-4 letters from a-h; a wrong step holds a 'z', and every
    step from the first wrong one on is labelled false (half the solutions have one)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(2, 4)
        bad = rng.randrange(k) if rng.random() < 0.5 else None
        steps = []
        for j in range(k):
            word = [rng.choice("abcdefgh") for _ in range(rng.randint(2, 4))]
            if j == bad:
                word[rng.randrange(len(word))] = "z"
            steps.append("".join(word))
        prompt = "".join(rng.choice("abcdefgh") for _ in range(3)) + "="
        rows.append({"prompt": prompt, "completions": steps, "labels": [bad is None or j < bad for j in range(k)]})
    return rows


def test_saved_directory_is_step_level_with_the_same_scores(tiny_model_dir, tmp_path):
    from tokrl.rewards.steps import score_steps

    write_jsonl(tmp_path / "s.jsonl", letter_steps(40))
    for head in ("classifier", "scalar_head"):
        cfg = ProcessRewardConfig(data=str(tmp_path / "s.jsonl"), model=str(tiny_model_dir), head=head, lr=1e-3,
                                  step_separator=",", test_fraction=0.25)
        run = prepare(cfg)
        summary = fit(run)
        assert summary["steps"] == 2 and summary["level"] == "step"
        save(run, tmp_path / head, summary)
        info = json.loads((tmp_path / head / "reward_model.json").read_text())
        assert (info["kind"], info["level"], info["step_separator"]) == (head, "step", ",")
        held = [json.loads(line) for line in (tmp_path / head / HELDOUT_FILE).read_text().splitlines()]
        assert len(held) == summary["test_solutions"]
        assert all(r["found"] == (r["first_wrong"] == r["predicted_first_wrong"]) for r in held)
        assert sum(r["found"] for r in held) / len(held) == pytest.approx(summary["test_after"]["first_error_found"])
        model, tokenizer = load_reward_model(tmp_path / head, level="step")
        args = (["ab="], [["abc", "dz"]], ",")
        expected = score_steps(run.model, run.tokenizer, *args)
        assert score_steps(model, tokenizer, *args) == [pytest.approx(expected[0], abs=1e-5)]
        with pytest.raises(ValueError, match="is a step-level reward model"):
            load_reward_model(tmp_path / head)


def test_a_prm_learns_to_find_the_first_wrong_step(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", letter_steps(240, seed=0))
    write_jsonl(tmp_path / "test.jsonl", letter_steps(60, seed=1))
    status, stdout, _ = cli(["reward-model", "train", str(tmp_path / "train.jsonl"), "--level", "step",
                             "--test-data", str(tmp_path / "test.jsonl"), "--model", str(tiny_model_dir),
                             "--output", str(tmp_path / "prm"), "--epochs", "3", "--lr", "1e-3",
                             "--step-separator", ",", "--quiet"])
    assert status == 0
    summary = json.loads(stdout)
    after = summary["test_after"]
    assert after["step_accuracy"] >= after["majority_rate"] + 0.2
    assert after["first_error_found"] >= 0.8 and after["first_error_found_when_wrong"] >= 0.7
    # the separator defaults to the one the model was trained with
    status, stdout, _ = cli(["reward-model", "eval", str(tmp_path / "prm"), str(tmp_path / "test.jsonl"),
                             "--level", "step"])
    assert status == 0 and json.loads(stdout)["step_accuracy"] == pytest.approx(after["step_accuracy"])
    print(f"\nPRM held-out step accuracy {summary['test_before']['step_accuracy']:.3f} -> "
          f"{after['step_accuracy']:.3f} (majority {after['majority_rate']:.3f}); first wrong step found "
          f"{after['first_error_found']:.3f}")


def test_trl_file_trains_end_to_end_on_the_tiny_model(tiny_model_dir, tmp_path):
    (tmp_path / "trl.jsonl").write_text(TRL_FILE * 4)
    status, stdout, stderr = cli(["reward-model", "train", str(tmp_path / "trl.jsonl"), "--level", "step",
                                  "--model", str(tiny_model_dir), "--output", str(tmp_path / "prm"),
                                  "--step-separator", " ", "--test-fraction", "0.34", "--quiet"])
    assert status == 0, stderr
    summary = json.loads(stdout)
    assert summary["test_after"]["n_solutions"] == 4 and summary["train_solutions"] == 8
