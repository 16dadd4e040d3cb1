"""Learned reward models: the Bradley-Terry math by hand, both kinds saved and loaded in
Hugging Face format, a model directory as a recipe reward, and end to end: trained on a
small synthetic preference set it ranks held-out pairs right, and RL with it raises it."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from tokrl.tasks.data import write_jsonl
from tokrl.offline.reward_model import (
    RewardModelConfig,
    bradley_terry_loss,
    fit,
    pairwise_accuracy,
    prepare,
    save,
)
from tokrl.rewards import build_reward, call_rewards
from tokrl.rewards.model import HEAD_FILE, encode, load_reward_model, pad_right

from .helpers import cli

A, B, EQ = 3, 4, 40            # tiny tokenizer ids of 'a', 'b', '='


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([0.0, 0.0, 1.0])
    # -log σ(d) = log(1 + e^-d) for d = 2, 0, -2
    expected = (math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.exp(2))) / 3
    assert float(bradley_terry_loss(chosen, rejected)) == pytest.approx(expected)


def test_pairwise_accuracy_by_hand():
    # right, a tie (counts as wrong), wrong
    assert pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 4.0])) == pytest.approx(1 / 3)


def test_encode_and_pad_by_hand(tokenizer):
    seqs = encode(tokenizer, ["ab=", "a="], ["b", "bab"], max_length=None)
    assert seqs == [[A, B, EQ, B], [A, EQ, B, A, B]]
    # too long: the oldest tokens go, so the completion is always seen
    assert encode(tokenizer, ["ab="], ["bab"], max_length=4) == [[EQ, B, A, B]]
    ids, mask = pad_right(seqs, pad_id=0)
    assert ids.tolist() == [[A, B, EQ, B, 0], [A, EQ, B, A, B]]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


# ---------------------------------------------------------------- synthetic preferences

OTHER = "bcdefghijklmnopqrstuvwxyz"


def preference_pairs(n: int, seed: int = 0) -> list[dict]:
    """Completions of 2-6 letters; the chosen one holds more a's than the rejected one."""
    rng = random.Random(seed)

    def word(length: int, a_count: int) -> str:
        letters = ["a"] * a_count + [rng.choice(OTHER) for _ in range(length - a_count)]
        rng.shuffle(letters)
        return "".join(letters)

    rows = []
    for _ in range(n):
        length = rng.randint(2, 6)
        fewer = rng.randint(0, length - 1)
        more = rng.randint(fewer + 1, length)
        prompt = "".join(rng.choice(OTHER) for _ in range(3)) + "="
        rows.append({"prompt": prompt, "chosen": word(length, more), "rejected": word(length, fewer)})
    return rows


ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefs():
    """The shipped example: 300 pairs made by the same recipe as preference_pairs."""
    return ROOT / "examples" / "prefs.jsonl"


@pytest.mark.parametrize("head", ["classifier", "scalar_head"])
def test_both_kinds_save_and_load_with_the_same_scores(tiny_model_dir, prefs, tmp_path, head):
    cfg = RewardModelConfig(data=str(prefs), model=str(tiny_model_dir), head=head, epochs=1, lr=1e-3,
                            test_fraction=0.1)
    run = prepare(cfg)
    run.train = run.train[:32]                                # two steps are enough to move it
    summary = fit(run)
    assert summary["steps"] == 2 and summary["test_pairs"] == 30
    save(run, tmp_path / "rm", summary)
    model, tokenizer = load_reward_model(tmp_path / "rm")
    assert model.kind == head and (tmp_path / "rm" / HEAD_FILE).is_file() == (head == "scalar_head")
    prompts, completions = ["ab=", "b="], ["aab", "bbbbbb"]
    expected = run.model.score(run.tokenizer, prompts, completions)
    assert model.score(tokenizer, prompts, completions) == pytest.approx(expected, abs=1e-5)
    info = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert info["kind"] == head and info["test_after"] == summary["test_after"]


def test_a_classifier_is_plain_hugging_face(tiny_model_dir, prefs, tmp_path):
    from transformers import AutoModelForSequenceClassification

    run = prepare(RewardModelConfig(data=str(prefs), model=str(tiny_model_dir)))
    save(run, tmp_path / "rm", {})
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", local_files_only=True)
    assert hf.config.num_labels == 1 and hf.config.architectures == ["LlamaForSequenceClassification"]
    ids, mask = pad_right(encode(run.tokenizer, ["ab="], ["ba"], None), 0)
    with torch.no_grad():
        assert float(hf(input_ids=ids, attention_mask=mask).logits[0, 0]) == \
            pytest.approx(run.model.score(run.tokenizer, ["ab="], ["ba"])[0], abs=1e-5)


def test_padding_does_not_change_a_score(tiny_model_dir, prefs):
    run = prepare(RewardModelConfig(data=str(prefs), model=str(tiny_model_dir), head="scalar_head"))
    torch.nn.init.normal_(run.model.head.linear.weight)       # a head that is not all zeros
    alone = run.model.score(run.tokenizer, ["ab="], ["b"])
    batched = run.model.score(run.tokenizer, ["ab=", "abcabc="], ["b", "abcabcabc"])
    assert batched[0] == pytest.approx(alone[0], abs=1e-5)


def test_a_model_directory_is_a_recipe_reward(tiny_model_dir, prefs, tmp_path):
    run = prepare(RewardModelConfig(data=str(prefs), model=str(tiny_model_dir)))
    save(run, tmp_path / "rm", {})
    reward = build_reward({"reward_model": str(tmp_path / "rm"), "batch_size": 1, "weight": 2.0})
    assert (reward.name, reward.weight) == ("reward_model", 2.0)
    got = call_rewards([reward], ["ab=", "b="], ["a", "bb"], [[A], [B, B]], {})["reward_model"]
    assert got == pytest.approx(run.model.score(run.tokenizer, ["ab=", "b="], ["a", "bb"]), abs=1e-5)


def test_what_is_not_a_reward_model_is_refused(tiny_model_dir, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="is not a reward model"):
        load_reward_model(tiny_model_dir)                     # a causal LM without a head
    with pytest.raises(FileNotFoundError, match="not found"):
        load_reward_model(tmp_path / "nothing")
    from transformers import AutoModelForSequenceClassification

    two = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    two.save_pretrained(tmp_path / "two")
    tokenizer.save_pretrained(tmp_path / "two")
    with pytest.raises(ValueError, match="classifier with 2 labels"):
        load_reward_model(tmp_path / "two")
    with pytest.raises(ValueError, match="head 'mlp' is not one of classifier, scalar_head"):
        RewardModelConfig(data="x", head="mlp").validate()


# ---------------------------------------------------------------- end to end

def test_a_trained_reward_model_ranks_heldout_pairs_and_rl_raises_its_reward(tiny_model_dir, tmp_path,
                                                                              monkeypatch):
    # the shipped example (examples/reward_model_rl.yaml), run as its header says
    monkeypatch.chdir(ROOT)
    rm = tmp_path / "rm"
    status, stdout, _ = cli(["reward-model", "train", "examples/prefs.jsonl", "--model", str(tiny_model_dir),
                             "--output", str(rm), "--epochs", "3", "--lr", "1e-3", "--test-fraction", "0.2",
                             "--quiet"])
    assert status == 0
    summary = json.loads(stdout)
    assert (summary["train_pairs"], summary["test_pairs"]) == (240, 60)
    accuracy = summary["test_after"]["accuracy"]
    assert accuracy >= 0.9

    # `reward-model eval` on held-out pairs it never saw
    write_jsonl(tmp_path / "fresh.jsonl", preference_pairs(100, seed=7))
    status, stdout, _ = cli(["reward-model", "eval", str(rm), str(tmp_path / "fresh.jsonl")])
    assert status == 0 and json.loads(stdout)["accuracy"] >= 0.9

    # RL against it: the policy learns to write what the reward model prefers
    status, stdout, _ = cli(["train", "examples/reward_model_rl.yaml", f"model.name={tiny_model_dir}",
                             f"task.options.rewards=[{{reward_model: {rm}}}]", "train.save_model=false",
                             f"train.output_dir={tmp_path / 'run'}", "--quiet"])
    assert status == 0
    result = json.loads(stdout)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(m["reward/mean"] for m in metrics[:5]) / 5
    last = sum(m["reward/mean"] for m in metrics[-5:]) / 5
    before, after = result["eval_before"]["reward"], result["eval_after"]["reward"]
    assert last > first + 0.5                                 # training reward, sampled completions
    assert after > before + 1.0                               # held-out prompts, greedy completions
    print(f"\nreward model held-out accuracy {summary['test_before']['accuracy']:.3f} -> {accuracy:.3f}; "
          f"RL reward (train, first/last 5 steps) {first:.2f} -> {last:.2f}; eval {before:.2f} -> {after:.2f}")


def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a=", "good": "a", "rejected": "b"}] * 4)
    out = tmp_path / "rm"
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, message in [
        ([str(tmp_path / "p.jsonl")], "no column 'chosen'"),
        ([str(tmp_path / "none.jsonl")], "data file"),
        ([str(tmp_path / "p.jsonl"), "--chosen-column", "good", "--epochs", "0"], "epochs must be >= 1"),
    ]:
        status, stdout, stderr = cli(["reward-model", "train", *argv, "--model", str(tiny_model_dir),
                                      "--output", str(out), "--quiet"])
        assert status == 2 and stdout == ""
        assert stderr.count("tokrl: error:") == 1 and message in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    status, _, stderr = cli(["reward-model", "eval", str(tiny_model_dir), str(tmp_path / "p.jsonl"),
                             "--chosen-column", "good"])
    assert status == 2 and "is not a reward model" in stderr
