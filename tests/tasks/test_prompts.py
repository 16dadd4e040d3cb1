"""The prompts task: prompts and columns from a table, rewards combined with weights,
each logged under its own name, unscorable samples counted, token-level and shaped
rewards paid per token, through the real rollout, TokenEnv and trainer."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
import yaml

from tokrl.config import SamplingConfig, load_config
from tokrl.tasks.data import write_jsonl
from tokrl.env import TokenEnv
from tokrl.generation.batch import rollout
from tokrl.tasks import TASKS, Prompts, build_task

ROWS = [{"prompt": f"{w}=", "answer": w, "reference": w[::-1], "level": i % 3}
        for i, w in enumerate(["ab", "ba", "abc", "cab", "bca", "aab", "bba", "cc", "ca", "ac"])]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, ROWS)
    return path


def ids(tokenizer, text, eos=False):
    out = tokenizer(text, add_special_tokens=False)["input_ids"]
    return out + [tokenizer.eos_token_id] if eos else out


def task_with(tokenizer, data, rewards, **options):
    return build_task("prompts", tokenizer, path=str(data), rewards=rewards, **options)


# ---------------------------------------------------------------- examples

def test_registered_and_built_by_name(tokenizer, data):
    task = task_with(tokenizer, data, [{"name": "exact_match"}], test_fraction=0.2)
    assert isinstance(task, Prompts) and TASKS["prompts"] is Prompts
    train, test = task.examples("train"), task.examples("test")
    assert (len(train), len(test)) == (8, 2)
    assert sorted(ex["prompt"] for ex in train + test) == sorted(r["prompt"] for r in ROWS)
    # every other column rides along with its prompt
    assert all(ex == next(r for r in ROWS if r["prompt"] == ex["prompt"]) for ex in train + test)


def test_a_prompt_column_of_another_name(tokenizer, tmp_path):
    path = tmp_path / "q.csv"
    path.write_text("question,answer\nwhat?,x\nwho?,y\n")
    task = task_with(tokenizer, path, [{"name": "exact_match"}], prompt_column="question", test_fraction=0.0)
    assert task.examples("train") == [{"prompt": "what?", "answer": "x"}, {"prompt": "who?", "answer": "y"}]


@pytest.mark.parametrize("options, rows, message", [
    ({"prompt_column": "question"}, ROWS, r"no column 'question'.*\(set task.options.prompt_column\)"),
    ({"rewards": [{"name": "exact_match", "column": "solution"}]}, ROWS,
     r"reward 'exact_match' needs the column 'solution', which .* does not have \(columns: answer, reference, level"),
    ({}, [{"prompt": "a", "completions": 1}], r"column 'completions' clashes with an argument every reward gets"),
    ({}, [{"prompt": "", "answer": 1}], r"a row's 'prompt' is ''; every prompt must be non-empty text"),
    ({"rewards": [{"name": "nope"}]}, ROWS, r"unknown reward 'nope'"),
    ({"rewards": []}, ROWS, r"rewards must be a non-empty list"),
    ({"reward": []}, ROWS, r"unknown option 'reward' for task prompts"),
])
def test_bad_options_are_one_clear_error(tokenizer, tmp_path, options, rows, message):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, rows)
    options = {"rewards": [{"name": "exact_match"}], **options}
    with pytest.raises(ValueError, match=message):
        build_task("prompts", tokenizer, path=str(path), **options)


# ---------------------------------------------------------------- combining

def test_sequence_rewards_are_the_weighted_sum_and_each_is_logged(tokenizer, data):
    task = task_with(tokenizer, data, [{"name": "exact_match", "weight": 1.0},
                                       {"name": "length", "target": 2, "weight": 0.5}])
    examples = [ROWS[0], ROWS[2]]                     # answers "ab" and "abc"
    # "ab": exact 1, length 1 -> 1 + 0.5; "ab" for "abc": exact 0, length 1 -> 0.5
    assert task.sequence_rewards(examples, ["ab", "ab"]) == [1.5, 0.5]
    assert task.last_reward_components() == {"rewards/exact_match": 0.5, "rewards/length": 1.0,
                                             "rewards/unscorable": 0.0}
    assert task.last_scorable() is None
    assert task.token_rewards(examples, [ids(tokenizer, "ab")] * 2) is None   # no token-level reward here


def test_a_reward_returning_none_is_left_out_of_the_sum_and_of_its_mean(tokenizer, data):
    task = task_with(tokenizer, data, [{"name": "numeric_match", "column": "answer"},
                                       {"name": "format", "pattern": "^a", "weight": 2.0}])
    # the answers "ab" and "ba" hold no number: numeric_match cannot score them
    assert task.sequence_rewards([ROWS[0], ROWS[1]], ["ab", "x"]) == [2.0, 0.0]
    assert task.last_reward_components() == {"rewards/format": 0.5, "rewards/unscorable": 0.0}


def test_a_sample_no_reward_can_score_gets_zero_and_is_counted(tokenizer, data):
    task = task_with(tokenizer, data, [{"name": "numeric_match"}])
    with pytest.warns(RuntimeWarning, match="could not be scored by any reward"):
        assert task.sequence_rewards([ROWS[0], ROWS[1]], ["1", "2"]) == [0.0, 0.0]
    assert task.last_scorable() == [False, False]
    assert task.last_reward_components() == {"rewards/unscorable": 2.0}


def test_token_level_and_sequence_level_rewards_together(tokenizer, data):
    task = task_with(tokenizer, data, [{"name": "exact_match"},
                                       {"name": "repetition", "ngram": 1, "penalty": 0.5},
                                       {"name": "length", "target": 4, "shaped": True, "label": "len_dense"}])
    completions = [ids(tokenizer, "aab", eos=True), ids(tokenizer, "ab", eos=True)]
    dense = task.token_rewards([ROWS[5], ROWS[0]], completions)
    # repetition: the second 'a' repeats (-0.5); shaped length (target 4): +.25 per char, EOS adds none
    assert dense == [[0.25, -0.25, 0.25, 0.0], [0.25, 0.25, 0.0]]
    assert task.sequence_rewards([ROWS[5], ROWS[0]], ["aab", "ab"]) == [1.0, 1.0]   # answers aab and ab
    assert task.last_reward_components() == {"rewards/exact_match": 1.0, "rewards/repetition": -0.25,
                                             "rewards/len_dense": 0.625, "rewards/unscorable": 0.0}


def test_sequence_rewards_get_the_sampled_ids_of_the_batch(tokenizer, data, tmp_path, monkeypatch):
    (tmp_path / "spy_rewards.py").write_text(textwrap.dedent('''
        SEEN = []
        def spy(completions, completion_ids, **kwargs):
            SEEN.append(completion_ids)
            return [0.0] * len(completions)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    task = task_with(tokenizer, data, [{"fn": "spy_rewards:spy"}])
    sampled = [ids(tokenizer, "ab", eos=True), ids(tokenizer, "c")]
    task.token_rewards(ROWS[:2], sampled)
    task.sequence_rewards(ROWS[:2], ["ab", "c"])
    # texts alone (no token_rewards call on this batch): the ids are the texts re-encoded
    task.sequence_rewards(ROWS[:2], ["ba", "cc"])
    spy = sys.modules.pop("spy_rewards")
    assert spy.SEEN == [sampled, [ids(tokenizer, "ba"), ids(tokenizer, "cc")]]


# ---------------------------------------------------------------- through the real machinery

def test_rollout_pays_token_rewards_per_token_and_sequence_rewards_at_the_end(policy, data):
    model, tokenizer = policy
    task = task_with(tokenizer, data, [{"name": "length", "target": 3, "weight": 2.0},
                                       {"name": "repetition", "ngram": 1, "penalty": 0.5}])
    batch = rollout(model, tokenizer, task, task.examples("train")[:3], 2, SamplingConfig(max_new_tokens=5),
                    generator=torch.Generator().manual_seed(0))
    for i in range(batch.num_sequences):
        n, row = int(batch.lengths[i]), batch.rewards[i].tolist()
        tokens = batch.tokens[i, :n].tolist()
        repeats = [-0.5 if tok in tokens[:t] else 0.0 for t, tok in enumerate(tokens)]
        length = 2.0 * max(0.0, 1 - abs(len(batch.texts[i]) - 3) / 3)
        expected = repeats[:-1] + [repeats[-1] + length]
        assert row[:n] == pytest.approx(expected, abs=1e-6)
        assert all(r == 0.0 for r in row[n:])                      # padding earns nothing


def test_token_env_pays_the_shaped_reward_step_by_step(tokenizer, data):
    task = task_with(tokenizer, data, [{"name": "length", "target": 2, "shaped": True}])
    env = TokenEnv(task, tokenizer, max_new_tokens=4)
    env.reset(options={"example": ROWS[0]})
    paid = [env.step(tok)[1] for tok in ids(tokenizer, "abc")]
    # Φ = 1 - |k - 2| / 2 for k chars: .5, 1, .5 -> increments .5, .5, -.5; the return is Φ("abc")
    assert paid == [0.5, 0.5, -0.5] and sum(paid) == 0.5


def test_a_trl_doc_reward_runs_unchanged_in_a_real_rollout(policy, tmp_path, monkeypatch):
    model, tokenizer = policy
    # TRL's GRPOTrainer docs, example 3 (a ground_truth column), as published
    (tmp_path / "trl_example.py").write_text(textwrap.dedent(r'''
        import re

        def reward_func(completions, ground_truth, **kwargs):
            # Regular expression to capture content inside \boxed{}
            matches = [re.search(r"\\boxed\{(.*?)\}", completion) for completion in completions]
            contents = [match.group(1) if match else "" for match in matches]
            # Reward 1 if the content is the same as the ground truth, 0 otherwise
            return [1.0 if c == gt else 0.0 for c, gt in zip(contents, ground_truth)]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "math.jsonl"
    write_jsonl(path, [{"prompt": f"{a}+{b}=", "ground_truth": str(a + b)} for a in range(4) for b in range(4)])
    task = task_with(tokenizer, path, [{"fn": "trl_example:reward_func"}])
    batch = rollout(model, tokenizer, task, task.examples("train")[:4], 2, SamplingConfig(max_new_tokens=4))
    sys.modules.pop("trl_example", None)
    # a random tiny model writes no \boxed{}: every completion scores 0, and nothing broke
    assert batch.scores.tolist() == [0.0] * 8
    assert task.last_reward_components() == {"rewards/reward_func": 0.0, "rewards/unscorable": 0.0}


def test_a_recipe_trains_on_the_prompts_task(tiny_model_dir, tmp_path, data):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": str(tiny_model_dir)},
        "task": {"name": "prompts", "options": {
            "path": str(data), "test_fraction": 0.2,
            "rewards": [{"name": "exact_match"}, {"name": "repetition", "ngram": 1, "weight": 0.1}]}},
        "sampling": {"max_new_tokens": 4},
        "algo": {"estimator": "rloo", "baseline": "none"},
        "train": {"max_steps": 2, "prompts_per_step": 4, "group_size": 2, "save_model": False,
                  "output_dir": str(tmp_path / "run")},
    }))
    from tokrl.training.loop import train

    cfg = load_config(recipe)
    result = train(cfg, tmp_path / "run")
    assert result["steps"] == 2 and result["eval_before"]["n"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["reward/mean"] <= 1.0 for m in metrics)
