"""The loop end to end on a real tiny Llama: it learns, every baseline runs, it is
reproducible, it stops early at the target reward, and GAE trains the critic."""

import json

import pytest
import torch

from tokrl.config import load_config
from tokrl.training.loop import train, train_step
from tokrl.training.state import build_state

from .helpers import RECIPE, params_of, run_metrics, small_config


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


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["grpo", "rloo"])
def test_group_recipes_with_dynamic_sampling_still_learn_target_match(tmp_path, recipe):
    # the shipped recipe with DAPO's dynamic sampling: groups that agree are dropped and refilled,
    # so the training batch's own mean stays near 0.5; the held-out greedy score is the measure
    cfg = load_config(f"configs/{recipe}.yaml", [f"train.output_dir={tmp_path / 'run'}", "train.save_model=false",
                                                 "train.dynamic_sampling=true", "log.tensorboard=false"])
    result = train(cfg, tmp_path / "run")
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert result["eval_before"]["reward"] < 0.2
    assert result["eval_after"]["reward"] >= 0.9                 # held-out inputs, greedy
    assert max(m["dynamic_sampling/rounds"] for m in lines) > 1  # refills were drawn
    assert min(m["groups/informative"] for m in lines[:20]) == cfg.train.prompts_per_step


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
    strip = lambda text: [run_metrics(json.loads(line)) for line in text.splitlines()]
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


def test_a_run_built_to_hit_the_length_cap_warns_on_the_console_and_in_its_report(tiny_model_dir, tmp_path):
    # one token allowed for 4-character answers: every completion (an EOS counts as its one
    # token) reaches the cap, completion/at_cap_frac = 1.0 >= 0.9, five steps in a row by
    # step 5, dated to step 1
    cfg = small_config(tiny_model_dir, tmp_path, "sampling.max_new_tokens=1",
                       "train.max_steps=6", "train.prompts_per_step=2", "train.target_reward=null",
                       "log.tensorboard=false")
    said = []
    result = train(cfg, tmp_path / "run", warn=said.append)
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["completion/at_cap_frac"] for m in lines] == [1.0] * 6
    assert [(w.kind, w.began) for w in said] == [("length_cap", 1)]
    assert [(w.kind, w.began, w.last) for w in result["state"].health.warnings()] == [("length_cap", 1, 6)]
    report = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "completions pinned at the length cap</b> from step 1" in report and "sampling.max_new_tokens" in report


def test_a_healthy_short_run_prints_no_warning(tiny_model_dir, tmp_path, capsys):
    cfg = small_config(tiny_model_dir, tmp_path, "train.max_steps=3", "train.prompts_per_step=4",
                       "log.tensorboard=false")
    train(cfg, tmp_path / "run")
    assert "warning" not in capsys.readouterr().err
    assert "No warnings" in (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
