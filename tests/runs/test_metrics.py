"""Metrics sinks: the JSON-lines files always (names and records exactly as
documented), TensorBoard event files when tensorboard is installed and asked for,
and a local Weights & Biases run in offline mode (no network)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from tokrl.config import LogConfig
from tokrl.runs.metrics import MetricsWriter
from tokrl.types import Rollout

JSONL = {"metrics.jsonl", "samples.jsonl", "eval.jsonl", "eval_samples.jsonl"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def batch(tokenizer, make_rollout) -> Rollout:
    """Two completions, "ab" (+EOS-free, 2 tokens) and "b" (1 token, then padding)."""
    ids = tokenizer(["ab", "b"], add_special_tokens=False)["input_ids"]
    pad = tokenizer.pad_token_id
    tokens = torch.tensor([ids[0], ids[1] + [pad]])                       # (2, 2)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    rewards = torch.tensor([[0.5, 0.5], [0.25, 0.0]])
    return make_rollout(rewards, mask, prompt_ids=torch.tensor([[1], [1]]), tokens=tokens,
                        lengths=torch.tensor([2, 1]), advantages=torch.tensor([[0.1234567, -0.2], [0.3, 0.0]]),
                        texts=["ab", "b"], examples=[{"prompt": "ab="}, {"prompt": "b="}])


def write_a_run(writer: MetricsWriter, tokenizer, batch: Rollout) -> None:
    """What train() writes: eval at 0, two steps (the second with a mid-training eval), a final eval."""
    writer.write_eval(0, {"reward": 0.1, "solved": 0.0, "n": 2},
                      [{"prompt": "ab=", "completion": "x", "score": 0.0}, {"prompt": "b=", "completion": "b", "score": 1.0}])
    writer.write_metrics({"step": 1, "reward/mean": 0.25, "policy/entropy": 3.5, "kl/ref_per_seq": 0.0})
    writer.write_samples(1, batch, 4, tokenizer)
    writer.write_eval(2, {"reward": 0.5, "solved": 0.5, "n": 2}, [])
    writer.write_metrics({"step": 2, "reward/mean": 0.75, "policy/entropy": 3.0, "kl/ref_per_seq": 0.0,
                          "eval/reward": 0.5, "eval/solved": 0.5, "eval/n": 2})
    writer.write_eval(2, {"reward": 0.6, "solved": 0.5, "n": 2}, [])


# ---------------------------------------------------------------- JSON lines

def test_jsonl_files_and_records(tmp_path, tokenizer, batch):
    run_dir = tmp_path / "run"
    writer = MetricsWriter(run_dir)
    write_a_run(writer, tokenizer, batch)
    writer.close()
    writer.close()                                          # twice is harmless
    assert {p.name for p in run_dir.iterdir()} == JSONL     # no sink asked for: nothing else
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert metrics[0] == {"step": 1, "reward/mean": 0.25, "policy/entropy": 3.5, "kl/ref_per_seq": 0.0}
    assert [m["step"] for m in metrics] == [1, 2]
    assert read_jsonl(run_dir / "eval.jsonl") == [{"step": 0, "reward": 0.1, "solved": 0.0, "n": 2},
                                                  {"step": 2, "reward": 0.5, "solved": 0.5, "n": 2},
                                                  {"step": 2, "reward": 0.6, "solved": 0.5, "n": 2}]
    assert read_jsonl(run_dir / "eval_samples.jsonl") == [
        {"step": 0, "prompt": "ab=", "completion": "x", "score": 0.0},
        {"step": 0, "prompt": "b=", "completion": "b", "score": 1.0}]
    first, second = read_jsonl(run_dir / "samples.jsonl")
    assert first == {"step": 1, "prompt": "ab=", "completion": "ab", "score": 1.0,
                     "tokens": first["tokens"], "token_texts": ["a", "b"], "rewards": [0.5, 0.5],
                     "advantages": [0.123457, -0.2]}          # rounded to 6 digits
    assert second["token_texts"] == ["b"] and second["rewards"] == [0.25] and second["score"] == 0.25


def test_a_multi_turn_sample_records_which_tokens_the_policy_wrote(tmp_path, tokenizer, make_rollout):
    """A mask with a hole inside the episode (an observation) is logged as "policy" 1/0 per token;
    a one-turn sample (mask 1 up to its length) logs no such list."""
    ids = tokenizer(["a ok:b", "ab"], add_special_tokens=False)["input_ids"]
    tokens = torch.tensor([ids[0], ids[1] + [tokenizer.pad_token_id] * 4])                  # (2, 6)
    mask = torch.tensor([[1.0, 0, 0, 0, 0, 1], [1, 1, 0, 0, 0, 0]])
    batch = make_rollout(torch.zeros(2, 6), mask, tokens=tokens, lengths=torch.tensor([6, 2]),
                         texts=["a ok:b", "ab"], examples=[{"prompt": "x"}, {"prompt": "y"}])
    writer = MetricsWriter(tmp_path / "run")
    writer.write_samples(1, batch, 2, tokenizer)
    writer.close()
    multi, single = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert multi["policy"] == [1, 0, 0, 0, 0, 1] and "policy" not in single


def test_jsonl_appends(tmp_path):
    for step in (1, 2):
        writer = MetricsWriter(tmp_path, LogConfig(tensorboard=False))
        writer.write_metrics({"step": step, "reward/mean": 0.0})
        writer.close()
    assert [m["step"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


# ---------------------------------------------------------------- TensorBoard

def test_tensorboard_event_files_hold_the_scalars(tmp_path, tokenizer, batch):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    writer = MetricsWriter(run_dir, LogConfig(tensorboard=True))
    write_a_run(writer, tokenizer, batch)
    writer.close()
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"reward/mean", "policy/entropy", "eval/reward", "eval/solved"} <= tags
    assert "eval/n" not in tags and "step" not in tags
    assert [(e.step, e.value) for e in events.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]
    # every evaluation once, at its step (the eval/* copy inside step 2's metrics is not logged again)
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("eval/reward")] == [(0, 0.1), (2, 0.5), (2, 0.6)]


def test_tensorboard_off_writes_no_event_files(tmp_path):
    writer = MetricsWriter(tmp_path, LogConfig(tensorboard=False))
    writer.write_metrics({"step": 1, "reward/mean": 0.0})
    writer.close()
    assert not (tmp_path / "tb").exists()


def test_tensorboard_not_installed_is_skipped_quietly(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)     # as if it were not installed
    writer = MetricsWriter(tmp_path, LogConfig(tensorboard=True))
    writer.write_metrics({"step": 1, "reward/mean": 0.0})
    writer.close()
    assert {p.name for p in tmp_path.iterdir()} == JSONL


# ---------------------------------------------------------------- Weights & Biases

@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """wandb that cannot reach the network: offline mode, silent, every directory in tmp."""
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb)")
    for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))


def test_wandb_offline_writes_a_local_run(tmp_path, tokenizer, batch, offline_wandb):
    run_dir = tmp_path / "run"
    writer = MetricsWriter(run_dir, LogConfig(tensorboard=False, wandb_project="tokrl-test", wandb_mode="offline"),
                           config={"algo": {"estimator": "reinforce"}})
    write_a_run(writer, tokenizer, batch)
    writer.close()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (run_dir / "wandb" / "tokrl-run-id").read_text().strip()
    log = runs[0] / f"run-{run_id}.wandb"                  # the transaction log `wandb sync` uploads
    data = log.read_bytes()
    for key in (b"reward/mean", b"eval/reward", b"estimator"):
        assert key in data
    assert JSONL <= {p.name for p in run_dir.iterdir()}


def test_wandb_resume_continues_the_same_run(tmp_path, offline_wandb):
    log = LogConfig(tensorboard=False, wandb_project="tokrl-test", wandb_mode="offline")
    writer = MetricsWriter(tmp_path, log)
    writer.write_metrics({"step": 1, "reward/mean": 0.0})
    writer.close()
    first = (tmp_path / "wandb" / "tokrl-run-id").read_text()
    writer = MetricsWriter(tmp_path, log, resume_step=1)
    writer.write_metrics({"step": 2, "reward/mean": 0.5})
    writer.close()
    assert (tmp_path / "wandb" / "tokrl-run-id").read_text() == first
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all((run / f"run-{first.strip()}.wandb").is_file() for run in runs)


def test_wandb_configured_but_not_installed_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)           # as if it were not installed
    with pytest.raises(ValueError) as error:
        MetricsWriter(tmp_path / "run", LogConfig(wandb_project="tokrl-test"))
    message = str(error.value)
    assert "\n" not in message and "pip install wandb" in message and "log.wandb_project" in message
    assert not (tmp_path / "run").exists()
