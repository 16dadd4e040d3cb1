"""Supervised warm start: the loss covers completion tokens only; `tokrl sft` lowers the
held-out loss on a small synthetic corpus and its output starts an RL recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tokrl.config import ModelConfig, SamplingConfig, load_config
from tokrl.tasks.data import write_jsonl
from tokrl.training.evaluate import evaluate
from tokrl.models.load import load_policy
from tokrl.offline.sft import IGNORE, SFTConfig, collate, completion_nll, encode_example
from tokrl.tasks import build_task

from .helpers import cli

# the tiny tokenizer: <pad>=0 <eos>=1 <bos>=2, a..z = 3..28, then digits, ' ' = 39, '=' = 40
A, B, C, EQ, EOS = 3, 4, 5, 40, 1


def test_tokenizer_ids_used_below(tokenizer):
    assert tokenizer("abc=", add_special_tokens=False)["input_ids"] == [A, B, C, EQ]


def test_encode_example_by_hand(tokenizer):
    assert encode_example(tokenizer, "ab=", "ba") == ([A, B, EQ, B, A, EOS], 3)
    assert encode_example(tokenizer, "ab=", "ba", add_eos=False) == ([A, B, EQ, B, A], 3)
    # too long: the completion is cut at its end; the prompt is never cut
    assert encode_example(tokenizer, "ab=", "bac", max_length=5) == ([A, B, EQ, B, A], 3)
    with pytest.raises(ValueError, match="a prompt has 3 tokens, leaving no room"):
        encode_example(tokenizer, "ab=", "ba", max_length=3)
    with pytest.raises(ValueError, match="empty prompt"):
        encode_example(tokenizer, "", "ba")


def test_collate_masks_prompt_and_padding_by_hand():
    ids, attention, labels = collate([([A, B, EQ, B, EOS], 3), ([C, EQ, A], 2)], pad_id=0)
    assert ids.tolist() == [[A, B, EQ, B, EOS], [C, EQ, A, 0, 0]]
    assert attention.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    X = IGNORE
    assert labels.tolist() == [[X, X, X, B, EOS], [X, X, A, X, X]]


def test_completion_nll_is_cross_entropy_on_completion_tokens_only(tiny_model_dir, tokenizer):
    model, _ = load_policy(ModelConfig(name=str(tiny_model_dir)))
    examples = [encode_example(tokenizer, "ab=", "ba"), encode_example(tokenizer, "c=", "cab")]
    ids, attention, labels = collate(examples, tokenizer.pad_token_id)
    nll, n = completion_nll(model, ids, attention, labels)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits
    # by hand: position t predicts token t+1; the targets are the 3 + 4 completion tokens (EOS included)
    by_hand = sum(F.cross_entropy(logits[i, t - 1], ids[i, t], reduction="sum")
                  for i, (seq, P) in enumerate(examples) for t in range(P, len(seq)))
    assert int(n) == 3 + 4
    assert float(nll.detach()) == pytest.approx(float(by_hand), rel=1e-5)
    assert nll.requires_grad


def test_the_config_checks_its_values():
    for bad, message in [({"epochs": 0}, "epochs"), ({"lr": 0.0}, "learning rate"),
                         ({"test_fraction": 1.0}, "test fraction"), ({"dtype": "float16"}, "float16")]:
        with pytest.raises(ValueError, match=message):
            SFTConfig(data="x", **bad).validate()


# ---------------------------------------------------------------- end to end

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_sft_lowers_heldout_loss_and_rl_starts_from_its_output(tiny_model_dir, tmp_path, monkeypatch):
    # the shipped example (examples/sft_then_rl.yaml), run as its header says
    monkeypatch.chdir(ROOT)
    out = tmp_path / "sft-model"
    status, stdout, _ = cli(["sft", "examples/copy_sft.jsonl", "--model", str(tiny_model_dir), "--output",
                             str(out), "--epochs", "8", "--lr", "3e-3", "--test-fraction", "0.2", "--quiet"])
    assert status == 0
    summary = json.loads(stdout)
    assert summary["output"] == str(out) and summary["test_examples"] > 30
    before, after = summary["test_loss_before"], summary["test_loss_after"]
    assert before > 3.0                                   # ~ln(49): a random model over 49 tokens
    assert after < 0.1 * before                           # copying is learned on held-out words
    assert json.loads((out / "sft.json").read_text())["test_loss_after"] == after
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]

    # the SFT output is the model of an RL recipe
    recipe = EXAMPLES / "sft_then_rl.yaml"
    overrides = [f"model.name={out}", "train.max_steps=3", "train.eval_samples=32",
                 f"train.output_dir={tmp_path / 'run'}"]
    status, stdout, _ = cli(["train", str(recipe), *overrides, "--quiet"])
    assert status == 0
    result = json.loads(stdout)
    assert result["steps"] == 3
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3
    # the warm start already solves most held-out prompts (exact match 1, minus a small
    # repetition penalty on words like abab); the random model solves none
    assert result["eval_before"]["reward"] >= 0.5
    cfg = load_config(recipe, overrides)
    base, tok = load_policy(ModelConfig(name=str(tiny_model_dir)))
    task = build_task("prompts", tok, **cfg.task.options)
    random_model, _ = evaluate(base.eval(), tok, task, task.examples("test")[:32], SamplingConfig(6, 0.0))
    assert task.last_reward_components()["rewards/exact_match"] == 0.0
    assert random_model["reward"] <= 0.0                  # repetition penalties only
    print(f"\nSFT held-out loss {before:.3f} -> {after:.4f}; exact match after SFT "
          f"{result['eval_before']['reward']:.3f} (random model {random_model['reward']:.3f}), "
          f"after 3 RL steps {result['eval_after']['reward']:.3f}")


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written

def bad(argv, tmp_path) -> str:
    before = sorted(p.name for p in tmp_path.iterdir())
    status, stdout, stderr = cli(argv)
    assert status == 2 and stdout == ""
    lines = [line for line in stderr.splitlines() if line.startswith("tokrl: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before          # nothing written
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(tiny_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    write_jsonl(data, [{"prompt": "ab=", "completion": "ab"}] * 4)
    out = str(tmp_path / "out")
    model = ["--model", str(tiny_model_dir), "--output", out, "--quiet"]
    assert "data file" in bad(["sft", str(tmp_path / "nope.jsonl"), *model], tmp_path)
    assert "no column 'answer'" in bad(["sft", str(data), "--completion-column", "answer", *model], tmp_path)
    assert "epochs must be >= 1" in bad(["sft", str(data), "--epochs", "0", *model], tmp_path)
    assert "no model named 'nope'" in bad(["sft", str(data), "--model", "nope", "--output", out], tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    assert "already exists; pass --overwrite" in bad(["sft", str(data), *model], tmp_path)
    assert (tmp_path / "out" / "config.json").read_text() == "{}"
