"""Smoke test of the benchmark harness: `benchmarks/rollout.py --quick` on the tiny model.

It checks that the benchmark runs and reports what it promises (machine, versions,
configuration, per-variant medians and IQRs, ratios); it claims nothing about speed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_rollout_benchmark_quick_on_tiny_model(tmp_path):
    out = tmp_path / "rollout.json"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "rollout.py"), "--quick", "--models", "tiny",
         "--cache-dir", os.environ.get("TOKRL_CACHE", str(tmp_path / "cache")), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report
    assert report["benchmark"] == "rollout"
    for key in ("cpu_model", "cores", "torch_threads"):
        assert key in report["machine"]
    for key in ("python", "torch", "transformers", "trl", "tokrl_git_sha"):
        assert key in report["versions"]
    assert report["configuration"]["quick"] is True
    tiny = report["results"]["generate"]["tiny"]
    for batch in report["configuration"]["batches"]:
        entry = tiny[f"batch_{batch}"]
        for variant in ("tokrl[fp32]", "hf[fp32]"):
            stats = entry["tokens_per_s"][variant]
            assert stats["median"] > 0 and stats["iqr"] >= 0
            assert entry["tokens_per_cpu_s"][variant]["median"] > 0
        r = report["ratios"]["generate"]["tiny"][f"batch_{batch}"]
        assert r["tokrl_over_hf"] > 0 and r["tokrl_over_hf_cpu"] > 0
    batch = report["configuration"]["kv_cache"]["batch"]["tiny"]
    kv = report["ratios"]["kv_cache"][f"tiny/batch_{batch}"]
    assert kv["kv_over_reencode"] > 0 and kv["kv_over_reencode_cpu"] > 0
    assert "smollm2" not in report["results"]["generate"]


@pytest.mark.slow
def test_checkpointing_benchmark_quick_on_tiny_model(tmp_path):
    out = tmp_path / "checkpointing.json"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "checkpointing.py"), "--quick",
         "--cache-dir", os.environ.get("TOKRL_CACHE", str(tmp_path / "cache")), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report and report["benchmark"] == "checkpointing"
    for variant in ("plain", "checkpointed"):
        assert report["results"]["update_s"][variant]["median"] > 0
        memory = report["results"]["memory"][variant]
        assert memory["peak_rss_mib"]["median"] > memory["rss_before_update_mib"]["median"] > 0
        # the children run before the parent loads a model: their peaks are their own
        child = report["results"]["children"][variant][0]
        assert child["parent_rss_mib"] < child["rss_before_update_mib"]
    ratios = report["ratios"]
    assert ratios["checkpointed_over_plain_update_s"] > 0 and ratios["plain_over_checkpointed_peak_rss"] > 0


@pytest.mark.slow
def test_prm_rl_benchmark_quick_on_tiny_model(tmp_path):
    out = tmp_path / "prm_rl.json"
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "prm_rl.py"), "--quick", "--runs-dir", str(tmp_path / "runs"),
         "--cache-dir", os.environ.get("TOKRL_CACHE", str(tmp_path / "cache")), "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert json.loads(out.read_text()) == report and report["benchmark"] == "prm_rl"
    configuration = report["configuration"]
    assert configuration["quick"] is True and configuration["arms"] == ["outcome", "prm", "step_match"]
    for arm in ("outcome", "prm", "step_match"):
        (run,) = report["results"][arm]["runs"]
        # held-out evaluations before training and after each of the 2 steps (eval_every 1)
        assert [step for step, _ in run["curve"]] == [0, 1, 2]
        assert all(0.0 <= acc <= 1.0 for _, acc in run["curve"]) and run["wall_s"] > 0
        # the gaming check reads every training sample: 2 prompts x 2 samples x 2 steps
        windows = run["prm_vs_checker"]
        assert [w["steps"] for w in windows] == [[1, 1], [2, 2]]
        assert all(w["n_steps"] >= 1 and 0.0 <= w["agreement"] <= 1.0 for w in windows)
    assert "warm_start_solved" in report["results"]["outcome"]["runs"][0]
    metrics = (tmp_path / "runs" / "prm-seed0" / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(line) for line in metrics]
    assert all("rewards/reward_model" in m and "rewards/outcome" in m for m in metrics)
