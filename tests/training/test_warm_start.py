"""The supervised warm start: demonstrations encoded as the rollout encodes prompts, fitted
before the first RL step, evaluated after; step 0 stays the base model's evaluation."""

import json

import pytest
import torch

from tokrl.config import ConfigError, load_config
from tokrl.tasks import Arithmetic, TargetMatch
from tokrl.training.loop import train
from tokrl.training.state import build_state
from tokrl.training.warm_start import demonstrations, warm_start

TEMPLATE = "task.options.template=sum {a}+{b}="
"""an arithmetic prompt in the tiny character tokenizer's alphabet (lower case only)"""


def arithmetic_config(tiny_model_dir, tmp_path, *overrides):
    """Two steps of the default algorithm on one-digit sums (92 train, 8 test questions)."""
    return load_config(None, [f"model.name={tiny_model_dir}", f"train.output_dir={tmp_path / 'run'}",
                              "train.save_model=false", "train.eval_samples=8", "task.name=arithmetic", TEMPLATE,
                              "task.options.num_test=8", "train.prompts_per_step=4", "train.max_steps=2",
                              "log.report=false", *overrides])


def test_a_demonstration_is_the_prompt_ids_then_the_answer_and_eos(tokenizer):
    task = Arithmetic(tokenizer, num_test=8, template="sum {a}+{b}=")
    cfg = load_config(None, ["task.name=arithmetic"])
    rows = demonstrations(task, tokenizer, cfg.model)
    assert len(rows) == 100 - 8                                   # every train question, no test question
    first = task.examples("train")[0]
    ids, P = rows[0]
    prompt_ids = tokenizer(first["prompt"], add_special_tokens=False)["input_ids"]
    # "sum 3+5=" is 8 characters, one token each; then "8" and EOS
    assert P == len(first["prompt"]) == len(prompt_ids)
    assert ids[:P] == prompt_ids
    assert tokenizer.decode(ids[P:-1]) == first["answer"] and ids[-1] == tokenizer.eos_token_id


def test_a_task_without_demonstrations_is_refused_by_name(tokenizer):
    cfg = load_config(None, ["task.name=target_match"])
    with pytest.raises(ConfigError, match="task 'target_match' writes no demonstrations"):
        demonstrations(TargetMatch(tokenizer), tokenizer, cfg.model)


def test_the_warm_start_fits_the_demonstrations_and_teaches_the_format(tiny_model_dir, tmp_path):
    cfg = arithmetic_config(tiny_model_dir, tmp_path, "warm_start.epochs=6", "warm_start.lr=0.01",
                            "warm_start.batch_size=16")
    state = build_state(cfg)
    rows = demonstrations(state.task, state.tokenizer, cfg.model)
    summary = warm_start(state.learner.model, state.tokenizer, rows, cfg)
    assert summary["steps"] == 6 * 6                              # 92 demonstrations in batches of 16: 6 per epoch
    assert summary["loss_last"] < 0.5 * summary["loss_first"]
    assert not state.learner.model.training                       # dropout stays off for RL
    # greedy answers to held-out questions are now a number and nothing else
    from tokrl.config import SamplingConfig
    from tokrl.training.evaluate import evaluate

    _, samples = evaluate(state.engine, state.tokenizer, state.task, state.task.examples("test"),
                          SamplingConfig(6, temperature=0.0))
    assert all(s["completion"].strip().isdigit() for s in samples), samples


def test_a_run_evaluates_the_base_model_then_warm_starts_then_trains(tiny_model_dir, tmp_path):
    plain = train(arithmetic_config(tiny_model_dir, tmp_path / "plain"), tmp_path / "plain" / "run")
    cfg = arithmetic_config(tiny_model_dir, tmp_path / "warm", "warm_start.epochs=2")
    result = train(cfg, tmp_path / "warm" / "run")
    # step 0 is the model the user started from, alike with and without the warm start
    assert result["eval_before"] == plain["eval_before"]
    assert plain["warm_start"] is None
    record = json.loads((tmp_path / "warm" / "run" / "warm_start.json").read_text())
    assert record == json.loads(json.dumps(result["warm_start"]))
    assert record["demonstrations"] == 92 and record["epochs"] == 2 and record["steps"] == 2 * 12
    assert set(record["eval_after"]) == {"reward", "solved", "n"}
    assert result["steps"] == 2
    weights = [p for p in result["state"].learner.model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(weights, plain["state"].learner.model.parameters()))


@pytest.mark.parametrize("override, message", [
    ("kl.coef=0.1", "KL reference would be the model before the warm start"),
    ("dist.strategy=fsdp", "with dist.strategy=fsdp run `tokrl sft` first"),
    ("warm_start.batch_size=0", "batch_size >= 1"),
])
def test_warm_start_settings_it_cannot_honour_are_refused(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", ".")):
        load_config(None, ["warm_start.epochs=1", override])


def test_a_multi_turn_demonstration_is_built_by_the_rollouts_turn_rule_with_loss_on_policy_turns(tokenizer):
    """guess_number, secret 3 of 1..4: the policy says "2" (EOS ends its turn), the environment
    " higher:", the policy "3" (EOS). The observation's ids are those the rollout appends; the
    labels hold the policy's ids (and EOS) only."""
    from tokrl.offline.sft import IGNORE, collate
    from tokrl.tasks import build_task

    task = build_task("guess_number", tokenizer, n=4)
    example = {"prompt": "guess a number from 1 to 4:", "secret": 3}
    assert task.demonstration(example) == ["2", " higher:", "3"]
    cfg = load_config(None, ["task.name=guess_number"])
    task.environment._splits["train"] = [example]
    [(ids, P, targets)] = demonstrations(task, tokenizer, cfg.model)
    enc = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]   # noqa: E731
    eos = tokenizer.eos_token_id
    assert ids[:P] == enc(example["prompt"])
    assert ids[P:] == enc("2") + [eos] + enc(" higher:") + enc("3") + [eos]
    assert targets == [True, True] + [False] * len(" higher:") + [True, True]
    _, _, labels = collate([(ids, P, targets)], tokenizer.pad_token_id)
    expected = [IGNORE] * P + enc("2") + [eos] + [IGNORE] * len(" higher:") + enc("3") + [eos]
    assert labels[0].tolist() == expected
