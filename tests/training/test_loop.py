"""The loop end to end on a real tiny Llama: it learns, every baseline runs, it is
reproducible, it stops early at the target reward, and GAE trains the critic."""

import json

import pytest
import torch

from tokrl.config import load_config
from tokrl.training.loop import train, train_step
from tokrl.training.state import build_state

from .helpers import RECIPE, params_of, small_config


@pytest.mark.slow
def test_tiny_model_learns_target_match_with_reinforce_value_baseline_and_entropy(tmp_path):
    # the shipped recipe as is: a tiny random Llama built on first use
    cfg = load_config(RECIPE, [f"train.output_dir={tmp_path / 'run'}", "train.save_model=false"])
    assert (cfg.algo.estimator, cfg.algo.baseline, cfg.algo.policy_loss) == ("reinforce", "value", "pg")
    assert cfg.algo.entropy_coef > 0
    result = train(cfg, tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = sum(m["reward/mean"] for m in lines[:5]) / 5
    assert first < 0.2                                      # chance is about 1/48 per position
    assert result["state"].reward_avg.value >= 0.9          # training reward, moving average
    assert result["eval_before"]["reward"] < 0.2
    assert result["eval_after"]["reward"] >= 0.9            # held-out inputs, greedy


@pytest.mark.parametrize("baseline", ["none", "ema", "value"])
def test_every_baseline_runs_and_changes_the_policy(tiny_model_dir, tmp_path, baseline):
    cfg = small_config(tiny_model_dir, tmp_path, f"algo.baseline={baseline}", "train.max_steps=2",
                       "train.prompts_per_step=4")
    state = build_state(cfg)
    before = params_of(state)
    metrics, batch = train_step(state, cfg)
    assert (state.learner.value_head is not None) == (baseline == "value")
    assert batch.advantages.shape == batch.tokens.shape
    assert any(not torch.equal(a, b) for a, b in zip(before, params_of(state)))
    for key in ("reward/mean", "policy/entropy", "loss/policy", "optim/grad_norm", "time/tokens_per_s"):
        assert key in metrics


def test_same_seed_same_weights(tiny_model_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = small_config(tiny_model_dir, tmp_path / name, "train.max_steps=3", "train.prompts_per_step=4")
        result = train(cfg, tmp_path / name / "run")
        runs.append((params_of(result["state"]), (tmp_path / name / "run" / "metrics.jsonl").read_text()))
    for a, b in zip(runs[0][0], runs[1][0]):
        assert torch.equal(a, b)
    strip = lambda text: [{k: v for k, v in json.loads(l).items() if not k.startswith(("time/", "memory/"))}
                          for l in text.splitlines()]
    assert strip(runs[0][1]) == strip(runs[1][1])


def test_every_step_logs_its_memory(trained_run):
    lines = [json.loads(l) for l in (trained_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3
    rss = [m["memory/rss_gb"] for m in lines]
    peak = [m["memory/peak_rss_gb"] for m in lines]
    # a process holding a Llama, torch and transformers: well above 50 MB, far below a TB
    assert all(0.05 < x < 1000 for x in rss + peak)
    assert all(r <= p for r, p in zip(rss, peak))               # never more now than at the peak
    assert peak == sorted(peak)                                 # the peak so far never falls


def test_target_reward_stops_early(tiny_model_dir, tmp_path):
    cfg = small_config(tiny_model_dir, tmp_path, "train.max_steps=50", "train.target_reward=0.0")
    result = train(cfg, tmp_path / "run")
    assert result["stopped_early"] and result["steps"] == 1


def test_gae_estimator_trains_the_critic(tiny_model_dir, tmp_path):
    cfg = small_config(tiny_model_dir, tmp_path, "algo.estimator=gae", "algo.baseline=none",
                       "train.prompts_per_step=4")
    state = build_state(cfg)
    assert state.learner.value_head is not None
    metrics, batch = train_step(state, cfg)
    assert "loss/value" in metrics and "critic/explained_variance" in metrics
    assert torch.allclose(batch.returns, (batch.advantages + batch.values) * batch.mask, atol=1e-6)
