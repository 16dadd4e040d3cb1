"""The stepwise RL task: prompts are the PRM data's questions, split by question; the
outcome reward by hand; extra rewards beside it; a few RL steps on the tiny model."""

from __future__ import annotations

import json

import pytest
import yaml

from tokrl.config import load_config
from tokrl.tasks import TASKS, build_task
from tokrl.tasks.stepwise import apply, question_text
from tokrl.tasks.stepwise_task import Stepwise, final_answer


def test_registered_and_split_by_question(tokenizer):
    assert TASKS["stepwise"] is Stepwise
    task = build_task("stepwise", tokenizer, num_train=200, num_test=40, min_ops=2, max_ops=3, seed=1)
    train, test = task.examples("train"), task.examples("test")
    assert len(train) == 200 and len(test) == 40
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert len({e["prompt"] for e in train}) == 200
    for ex in train + test:
        assert ex["prompt"].startswith("start at ") and 2 <= len(ex["steps"]) <= 3
        # each step's result is the next step's first value; the last one is the answer
        values = [s.split(" = ")[1] for s in ex["steps"]]
        assert [s.split(" ")[0] for s in ex["steps"][1:]] == values[:-1] and values[-1] == ex["answer"]
    # the same seed, the same questions
    assert build_task("stepwise", tokenizer, num_train=200, num_test=40, min_ops=2, max_ops=3,
                      seed=1).examples("test") == test


def test_an_example_by_hand(tokenizer):
    task = Stepwise(tokenizer)
    ex = task._example(question_text(7, [("add", 5), ("multiply", 2), ("subtract", 9)]), 7,
                       [("add", 5), ("multiply", 2), ("subtract", 9)])
    # 7 + 5 = 12, 12 * 2 = 24, 24 - 9 = 15
    assert ex == {"prompt": "start at 7; add 5; double it; subtract 9", "answer": "15",
                  "steps": ["7 + 5 = 12", "12 * 2 = 24", "24 - 9 = 15"]}
    assert task.demonstration(ex) == "7 + 5 = 12\n12 * 2 = 24\n24 - 9 = 15"
    assert apply(apply(apply(7, ("add", 5)), ("multiply", 2)), ("subtract", 9)) == 15


def test_outcome_is_the_last_integer_of_the_last_non_blank_step(tokenizer):
    assert final_answer("7 + 5 = 12\n12 * 2 = 24\n24 - 9 = 15\n\n") == "15"
    assert final_answer("so -3") == "-3" and final_answer("") is None and final_answer("none") is None
    task = Stepwise(tokenizer, num_train=4, num_test=2)
    ex = dict(task.examples("train")[0], answer="15")
    texts = ["7 + 5 = 12\n24 - 9 = 15", "15", "15\n16", "the answer is 15.\n \n", "", "15 or 16", "150"]
    assert task.sequence_rewards([ex] * len(texts), texts) == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert task.last_reward_components()["rewards/outcome"] == pytest.approx(3 / 7)


def test_extra_rewards_are_paid_beside_the_outcome_and_logged(tokenizer):
    task = build_task("stepwise", tokenizer, num_train=4, num_test=2, separator=",",
                      rewards=[{"name": "step_match", "separator": ","}])
    ex = task.examples("train")[0]
    right = task.demonstration(ex)                     # the tiny tokenizer has no newline: steps joined by ","
    wrong = ",".join(["0 + 0 = 0", *ex["steps"][1:]])
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in (right, wrong)]
    dense = task.token_rewards([ex, ex], ids)
    assert sum(dense[0]) == len(ex["steps"]) and sum(dense[1]) == 0.0
    assert task.sequence_rewards([ex, ex], [right, wrong]) == [1.0, 1.0]    # the last step still says the answer
    assert task.last_reward_components() == {"rewards/step_match": len(ex["steps"]) / 2, "rewards/outcome": 1.0,
                                             "rewards/unscorable": 0.0}


def test_rewards_read_the_raw_question_not_the_chat_formatted_prompt(policy):
    # what a PRM trained on steps-data reads as its prompt is the bare question text
    import copy

    from tokrl.config import SamplingConfig
    from tokrl.generation.batch import rollout
    from tokrl.rewards.base import Reward, TOKEN

    model, tokenizer = policy
    chat = copy.deepcopy(tokenizer)
    chat.chat_template = "{% for m in messages %}user: {{ m['content'] }} {% endfor %}assistant:"
    task = Stepwise(chat, num_train=4, num_test=2, separator=",")
    seen = []

    def capture(prompts, completion_ids):
        seen.extend(prompts)
        return [[0.0] * len(ids) for ids in completion_ids]

    task.set_rewards([*task.rewards, Reward(name="capture", fn=capture, level=TOKEN)], "the stepwise task")
    examples = task.examples("train")[:2]
    batch = rollout(model, chat, task, examples, 2, SamplingConfig(max_new_tokens=3), chat_template=True)
    # the policy read the chat-formatted prompt ...
    ids = batch.prompt_ids[0][batch.prompt_mask[0].bool()].tolist()
    assert chat.decode(ids, skip_special_tokens=True).startswith("user: start at ")
    # ... the rewards the bare question
    assert seen == [examples[0]["prompt"]] * 2 + [examples[1]["prompt"]] * 2
    assert all(p.startswith("start at ") for p in seen)


@pytest.mark.parametrize("options, message", [
    ({"min_ops": 3, "max_ops": 2}, "need 1 <= min_ops <= max_ops"),
    ({"num_test": 0}, "num_train and num_test must be >= 1"),
    ({"rewards": [{"name": "exact_match", "label": "outcome"}]}, "logged as 'outcome'"),
    ({"rewards": [{"name": "exact_match", "column": "solution"}]}, "needs the column 'solution'"),
    ({"min_ops": 1, "max_ops": 1, "num_train": 5000}, "could not find 5064 distinct questions"),
    ({"ops": ["add", "modulo"]}, "stepwise: operations must be some of add, subtract, multiply"),
])
def test_bad_options_are_one_clear_error(tokenizer, options, message):
    with pytest.raises(ValueError, match=message):
        build_task("stepwise", tokenizer, **options)


def test_a_recipe_trains_with_step_match_on_the_tiny_model(tiny_model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name": str(tiny_model_dir)},
        "task": {"name": "stepwise", "options": {
            "num_train": 16, "num_test": 4, "min_ops": 1, "max_ops": 2, "separator": ",",
            "rewards": [{"name": "step_match", "separator": ",", "weight": 0.5}]}},
        "sampling": {"max_new_tokens": 12},
        "algo": {"estimator": "rloo"},
        "warm_start": {"epochs": 1},
        "train": {"max_steps": 2, "prompts_per_step": 2, "group_size": 2, "save_model": False, "log_samples": 4,
                  "output_dir": str(tmp_path / "run")},
    }))
    from tokrl.training.loop import train

    result = train(load_config(recipe), tmp_path / "run")
    assert result["steps"] == 2 and result["eval_before"]["n"] == 4
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("rewards/step_match" in m and "rewards/outcome" in m for m in metrics)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["prompt"].startswith("start at ") for s in samples)
