"""Checkpoints, exact resume after SIGKILL, and guarded numerics, on a tiny Llama."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokrl.training.checkpoint import CheckpointError, complete_checkpoints, load_checkpoint, save_checkpoint, verify
from tokrl.config import load_config
from tokrl.errors import TrainingError
from tokrl.tasks import TASKS, TargetMatch
from tokrl.training.loop import train_step
from tokrl.training.state import build_state

from .helpers import run_metrics

RECIPE = "configs/reinforce.yaml"


def tiny(tiny_model_dir, run_dir, *overrides):
    return load_config(RECIPE, [f"model.name={tiny_model_dir}", f"train.output_dir={run_dir}", "train.eval_samples=4",
                                "train.prompts_per_step=4", "train.target_reward=null", *overrides])


def weights(state):
    return {n: p.detach().clone() for n, p in state.learner.model.named_parameters()}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_a_loaded_checkpoint_continues_exactly(tiny_model_dir, tmp_path, checkpointing):
    cfg = tiny(tiny_model_dir, tmp_path, "train.max_steps=4", f"train.activation_checkpointing={checkpointing}")
    a = build_state(cfg)
    for _ in range(2):
        train_step(a, cfg)
    ckpt = save_checkpoint(tmp_path, a, "{}", keep=2)
    assert ckpt.name == "step-00000002" and complete_checkpoints(tmp_path) == [ckpt]
    b = build_state(cfg)
    load_checkpoint(ckpt, b)
    assert b.step == 2 and b.sampler.state_dict() == a.sampler.state_dict()
    for _ in range(2):
        ma, _ = train_step(a, cfg)
        mb, _ = train_step(b, cfg)
        assert ma["reward/mean"] == mb["reward/mean"]
    for (name, x), y in zip(weights(a).items(), weights(b).values()):
        assert torch.equal(x, y), name
    for x, y in zip(a.learner.value_head.parameters(), b.learner.value_head.parameters()):
        assert torch.equal(x, y)


def test_only_the_newest_checkpoints_are_kept_and_temporaries_are_ignored(tiny_model_dir, tmp_path):
    cfg = tiny(tiny_model_dir, tmp_path, "train.max_steps=3")
    state = build_state(cfg)
    for _ in range(3):
        train_step(state, cfg)
        save_checkpoint(tmp_path, state, "{}", keep=2)
    (tmp_path / "checkpoints" / ".tmp-step-00000004").mkdir()        # a write that died
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    manifest = verify(complete_checkpoints(tmp_path)[-1])
    assert manifest["step"] == 3
    assert set(manifest["files"]) == {"weights.safetensors", "value_head.safetensors", "optimizer.pt", "state.pt",
                                      "config.yaml"}


def test_a_corrupt_checkpoint_is_refused(tiny_model_dir, tmp_path):
    cfg = tiny(tiny_model_dir, tmp_path, "train.max_steps=1")
    state = build_state(cfg)
    train_step(state, cfg)
    ckpt = save_checkpoint(tmp_path, state, "{}", keep=1)
    data = bytearray((ckpt / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (ckpt / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(ckpt, build_state(cfg))


def test_lora_checkpoints_hold_the_adapters_only(tiny_model_dir, tmp_path):
    cfg = tiny(tiny_model_dir, tmp_path, "train.max_steps=1", "model.lora_rank=2")
    state = build_state(cfg)
    train_step(state, cfg)
    ckpt = save_checkpoint(tmp_path, state, "{}", keep=1)
    names = load_file(ckpt / "weights.safetensors").keys()
    assert names and all("lora_" in n for n in names)
    fresh = build_state(cfg)
    load_checkpoint(ckpt, fresh)
    for (name, x), y in zip(weights(state).items(), weights(fresh).values()):
        assert torch.equal(x, y), name


# ------------------------------------------------------------------- numerics

class Poisoned(TargetMatch):
    """target_match whose reward is NaN for every other completion, or huge for every one."""

    def __init__(self, tokenizer, poison: str = "nan", **options):
        super().__init__(tokenizer, **options)
        self.poison = poison

    def sequence_rewards(self, examples, completions):
        if self.poison == "huge":
            return [3e38 for _ in completions]
        return [float("nan") if i % 2 == 0 else 0.0 for i in range(len(completions))]


@pytest.fixture
def poisoned(monkeypatch):
    monkeypatch.setitem(TASKS, "poisoned", Poisoned)


def poisoned_config(tiny_model_dir, tmp_path, *overrides):
    return tiny(tiny_model_dir, tmp_path, "task.name=poisoned", "train.prompts_per_step=16", *overrides)


def test_a_nan_reward_is_an_error_naming_the_task_and_sample(tiny_model_dir, tmp_path, poisoned):
    cfg = poisoned_config(tiny_model_dir, tmp_path)
    with pytest.raises(ValueError, match=r"task target_match gave a non-finite reward for completion 0 \("):
        train_step(build_state(cfg), cfg)


def test_a_nan_reward_can_be_skipped_and_counted(tiny_model_dir, tmp_path, poisoned):
    cfg = poisoned_config(tiny_model_dir, tmp_path, "train.on_bad_reward=skip")
    state = build_state(cfg)
    metrics, batch = train_step(state, cfg)
    dropped = list(range(0, batch.num_sequences, 2))
    assert metrics["reward/dropped"] == len(dropped)
    assert batch.mask[dropped].sum() == 0 and torch.isfinite(batch.rewards).all()
    assert all(torch.isfinite(p).all() for p in state.learner.parameters())


def test_overflowing_losses_skip_the_update_then_stop_the_run(tiny_model_dir, tmp_path, poisoned):
    cfg = poisoned_config(tiny_model_dir, tmp_path, "task.options.poison=huge", "train.max_bad_steps=2",
                          "algo.baseline=none")
    state = build_state(cfg)
    before = weights(state)
    metrics, _ = train_step(state, cfg)                        # advantages of 3e38 overflow the loss
    assert metrics["optim/skipped"] == 1.0 and state.bad_steps == 1
    for (name, x), y in zip(before.items(), weights(state).values()):
        assert torch.equal(x, y), name                         # no update, weights finite
    with pytest.raises(TrainingError, match="2 updates in a row"):
        train_step(state, cfg)


def test_a_nan_loss_is_skipped_and_the_next_good_step_resets_the_count(tiny_model_dir, tmp_path):
    cfg = tiny(tiny_model_dir, tmp_path, "train.max_steps=3")
    state = build_state(cfg)
    real = state.recipe
    state.recipe = dataclasses.replace(real, policy_loss=lambda *a: real.policy_loss(*a) * float("nan"))
    metrics, _ = train_step(state, cfg)
    assert metrics["optim/skipped"] == 1.0 and state.bad_steps == 1
    state.recipe = real
    metrics, _ = train_step(state, cfg)
    assert "optim/skipped" not in metrics and state.bad_steps == 0


# ------------------------------------------------------- crash and resume (SIGKILL)

def run_cli(args, env_extra=None, cwd=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "tokrl", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def final_weights(run_dir: Path):
    return load_file(run_dir / "model" / "model.safetensors")


def logged(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timings and memory (which no two runs share)."""
    return [run_metrics(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# dynamic sampling: refill rounds draw more prompts inside a step (the tiny model's groups mostly agree)
RESUMED = {"reinforce": [RECIPE],
           "grpo-dynamic": ["configs/grpo.yaml", "train.dynamic_sampling=true", "train.max_resample=2"],
           # multi-turn: environments seeded from (seed, step, prompt) replay after a resume
           "guess-number": ["configs/guess_number.yaml"]}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RESUMED)
def test_sigkill_anywhere_then_resume_ends_bitwise_identical(tiny_model_dir, tmp_path, recipe):
    common = [*RESUMED[recipe], f"model.name={tiny_model_dir}", "train.max_steps=6", "train.checkpoint_every=2",
              "train.prompts_per_step=4", "train.eval_samples=4", "train.target_reward=null", "--quiet"]
    clean = tmp_path / "clean"
    done = run_cli(["train", *common, f"train.output_dir={clean}"])
    assert done.returncode == 0, done.stderr
    reference = final_weights(clean)
    for point in ("rollout:3", "update:3", "checkpoint:4"):
        run_dir = tmp_path / point.replace(":", "-")
        killed = run_cli(["train", *common, f"train.output_dir={run_dir}"], {"TOKRL_KILL_AT": point})
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        assert not (run_dir / "model").exists()
        resumed = run_cli(["train", "--resume", str(run_dir), "--quiet"])
        assert resumed.returncode == 0, resumed.stderr
        got = final_weights(run_dir)
        assert got.keys() == reference.keys()
        for name in reference:
            assert torch.equal(got[name], reference[name]), (point, name)
        steps = [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert steps == [1, 2, 3, 4, 5, 6], point              # nothing logged twice, nothing lost
        # the same numbers (rounds drawn, signal) and the same health trackers in the last checkpoint
        assert logged(run_dir) == logged(clean), point
        last = Path("checkpoints") / "step-00000006" / "state.pt"
        assert (torch.load(run_dir / last, weights_only=True)["health"]
                == torch.load(clean / last, weights_only=True)["health"]), point
    if recipe == "grpo-dynamic":
        assert max(m["dynamic_sampling/rounds"] for m in logged(clean)) > 1
