"""Health warnings on hand-made metrics: for each warning, a run built to trigger it (with
the step it must begin at worked out in the test) and one that must not; the checkpointed
tracker warns as the report's replay does; the report shows the warnings."""

from __future__ import annotations

import pytest
import torch

from tokrl.runs.health import (PATIENCE, RISE_WINDOW, SPIKE_MIN_HISTORY, TREND_WINDOW, Limits, Tracker,
                               entropy_collapsed, grad_spike, replay)
from tokrl.runs.report import write_report

from .test_report import write_run

B = 16


def records(n: int, **overrides) -> list[dict]:
    """n healthy steps: flat reward 0.3 (a stall once the first high is RISE_WINDOW steps old), entropy 2.0, every group informative, gradient norm 1.0, KL 1
    nat per sequence, no completion at the cap. An override is a function of the step."""
    out = []
    for s in range(1, n + 1):
        record = {"step": s, "reward/mean": 0.3, "reward/moving_avg": 0.3, "policy/entropy": 2.0, "groups/informative": float(B),
                  "groups/zero_signal_frac": 0.0, "advantage/zero_rows_frac": 0.0, "optim/grad_norm": 1.0,
                  "kl/ref_per_seq": 1.0, "completion/at_cap_frac": 0.0}
        record.update({k: f(s) for k, f in overrides.items()})
        out.append(record)
    return out


def kinds(warnings) -> dict[str, tuple[int, int]]:
    return {w.kind: (w.began, w.last) for w in warnings}


LIMITS = Limits(prompts_per_step=B, kl_bound=20.0, max_new_tokens=8)


def test_a_healthy_flat_run_raises_nothing():
    assert replay(records(40), LIMITS) == []


# ------------------------------------------------------------------ entropy collapse

def test_entropy_collapse_while_the_reward_stalls_is_dated_to_its_first_step():
    # entropy 0.05 < ENTROPY_FLOOR 0.1 from step 10; the moving average's only high was step 1,
    # so from step 11 (11 - 1 >= RISE_WINDOW = 10) the run is stalled; the streak 10..14 is
    # PATIENCE = 5 steps long at step 14: fires there, dated to step 10, last seen at 30
    assert (RISE_WINDOW, PATIENCE) == (10, 5)
    got = replay(records(30, **{"policy/entropy": lambda s: 2.0 if s < 10 else 0.05}), LIMITS)
    assert kinds(got) == {"entropy_collapse": (10, 30)}
    assert "algo.entropy_coef" in got[0].fix and "0.050 nats/token" in got[0].message


def test_a_90_percent_drop_is_a_collapse_above_the_floor():
    # start 3.0 -> 0.25: above the floor 0.1 but below (1 - 0.9) * 3.0 = 0.3
    assert entropy_collapsed(0.25, 3.0) and not entropy_collapsed(0.35, 3.0)
    got = replay(records(20, **{"policy/entropy": lambda s: 3.0 if s < 12 else 0.25}), LIMITS)
    assert kinds(got) == {"entropy_collapse": (12, 20)}


@pytest.mark.parametrize("progress", ["rising reward", "target reached", "held-out rising"])
def test_no_collapse_warning_while_the_run_succeeds(progress):
    collapse = {"policy/entropy": lambda s: 2.0 if s < 10 else 0.05}
    if progress == "rising reward":
        # +0.03 a step: the mean of the last TREND_WINDOW rewards sets a new high (>= RISE 0.02
        # above the last) every step
        run, limits = records(30, **collapse, **{"reward/mean": lambda s: 0.03 * s}), LIMITS
    elif progress == "target reached":
        run, limits = records(30, **collapse), Limits(prompts_per_step=B, target_reward=0.3)
    else:
        # held-out 0.2 at step 5, 0.5 at step 12: rising from step 12 on; the streak from step 10
        # reaches PATIENCE at step 14, when the last evaluation is a record
        held_out = {5: 0.2, 12: 0.5}
        run = [{**r, **({"eval/reward": held_out[r["step"]]} if r["step"] in held_out else {})}
               for r in records(30, **collapse)]
        limits = LIMITS
    assert replay(run, limits) == []


def test_progress_is_judged_on_recent_rewards_not_on_the_lagging_moving_average():
    # reward 0.3, then 0.5 from step 5 on; its EMA (decay 0.9) is still climbing at step 30.
    # Means of the last TREND_WINDOW = 5 rewards: 0.34, 0.38, 0.42, 0.46, 0.50 at steps 5..9,
    # each a new high by >= RISE, then flat: progressing until step 18 (9 + RISE_WINDOW - 1).
    # Entropy collapses from step 10: the warning fires at step 19, dated to step 10.
    assert TREND_WINDOW == 5
    ema = [0.3]
    for s in range(2, 31):
        ema.append(0.9 * ema[-1] + 0.1 * (0.3 if s < 5 else 0.5))
    assert all(b > a for a, b in zip(ema[4:], ema[5:]))            # the EMA never stops rising
    run = records(30, **{"reward/mean": lambda s: 0.3 if s < 5 else 0.5, "reward/moving_avg": lambda s: ema[s - 1],
                         "policy/entropy": lambda s: 2.0 if s < 10 else 0.05})
    tracker = Tracker(LIMITS)
    fired_at = [r["step"] for r in run for w in tracker.observe(r)]
    assert fired_at == [19]
    assert kinds(tracker.warnings()) == {"entropy_collapse": (10, 30)}


def test_low_entropy_for_fewer_steps_than_the_patience_is_not_a_collapse():
    # 0.05 on steps 20..23 only: 4 < PATIENCE steps in a row
    assert replay(records(30, **{"policy/entropy": lambda s: 0.05 if 20 <= s <= 23 else 2.0}), LIMITS) == []


# --------------------------------------------------------------- groups without signal

def test_most_groups_without_signal_while_the_reward_stalls():
    # 4 of 16 groups informative from step 10: 25% < 50%; stalled from step 11, five in a row at 14
    got = replay(records(25, **{"groups/informative": lambda s: 16.0 if s < 10 else 4.0,
                                "groups/zero_signal_frac": lambda s: 0.0 if s < 10 else 0.75}), LIMITS)
    assert kinds(got) == {"no_signal": (10, 25)}
    assert "75% of the groups drawn" in got[0].message and "train.dynamic_sampling" in got[0].fix


def test_without_groups_the_share_of_sequences_without_advantage_counts():
    # no groups/* keys: 1 - 0.75 = 25% of the sequences carry an advantage
    run = [{k: v for k, v in r.items() if not k.startswith("groups/")}
           for r in records(20, **{"advantage/zero_rows_frac": lambda s: 0.75})]
    # the condition holds from step 1 but the run counts as progressing until step 10 (1 + RISE_WINDOW - 1)
    assert kinds(replay(run, LIMITS)) == {"no_signal": (1, 20)}


def test_half_the_groups_with_signal_is_not_most_without():
    # 8 / 16 = 50%: not below SIGNAL_SHARE 0.5
    assert replay(records(25, **{"groups/informative": lambda s: 8.0}), LIMITS) == []


# ----------------------------------------------------------------- gradient spikes

def test_a_gradient_norm_over_ten_times_the_running_median_is_a_spike():
    # norms 1, 2, 1, 2, 1 then 10.5: median 1.0, 10.5 > 10 * 1.0 -> a spike at step 6
    norms = [1.0, 2.0, 1.0, 2.0, 1.0, 10.5, 1.0, 1.0]
    assert grad_spike(10.5, norms[:5]) and not grad_spike(9.5, norms[:5])
    got = replay(records(8, **{"optim/grad_norm": lambda s: norms[s - 1]}), LIMITS)
    assert kinds(got) == {"grad_spike": (6, 6)}
    assert "optim.max_grad_norm" in got[0].fix and "10.5" in got[0].message


def test_no_spike_below_ten_times_the_median_or_before_enough_history():
    # 9.5 < 10 * median(1, 2, 1, 2, 1) = 10; 100 at step 3 has only 2 < SPIKE_MIN_HISTORY norms behind it
    assert SPIKE_MIN_HISTORY == 5
    assert replay(records(8, **{"optim/grad_norm": lambda s: [1, 2, 1, 2, 1, 9.5, 1, 1][s - 1]}), LIMITS) == []
    assert replay(records(8, **{"optim/grad_norm": lambda s: 100.0 if s == 3 else 1.0}), LIMITS) == []


# ------------------------------------------------------------------ KL to the reference

def test_kl_past_its_bound_with_a_reference():
    # fixed beta: the bound is KL_BOUND = 20 nats per sequence; 25 from step 3, five in a row at step 7
    limits = Limits.of({"kl": {"coef": 0.01}, "train": {"prompts_per_step": B}})
    assert limits.kl_bound == 20.0
    got = replay(records(12, **{"kl/ref_per_seq": lambda s: 25.0 if s >= 3 else 1.0}), limits)
    assert kinds(got) == {"kl_bound": (3, 12)}
    assert "kl.coef" in got[0].fix
    # an adaptive beta holding kl.target = 4 is bounded at twice the target
    assert Limits.of({"kl": {"coef": 0.01, "target": 4.0}}).kl_bound == 8.0


def test_no_kl_warning_without_a_reference_or_under_the_bound():
    no_reference = Limits.of({"kl": {"coef": 0.0}, "train": {"prompts_per_step": B}})
    assert no_reference.kl_bound is None
    assert replay(records(12, **{"kl/ref_per_seq": lambda s: 25.0}), no_reference) == []
    assert replay(records(12, **{"kl/ref_per_seq": lambda s: 19.9}), LIMITS) == []


# ------------------------------------------------------------------- the length cap

def test_completions_pinned_at_the_cap_warn_even_while_the_reward_rises():
    # 95% >= 90% at the cap from step 1, rising reward: not a stall warning, fires at step 5
    got = replay(records(9, **{"completion/at_cap_frac": lambda s: 0.95,
                               "reward/mean": lambda s: 0.1 * s}), LIMITS)
    assert kinds(got) == {"length_cap": (1, 9)}
    assert "sampling.max_new_tokens=8" in got[0].message


def test_completions_mostly_under_the_cap_do_not_warn():
    assert replay(records(20, **{"completion/at_cap_frac": lambda s: 0.85}), LIMITS) == []


# ------------------------------------------------------------- console = report

def test_a_checkpointed_tracker_warns_as_the_replay_does(tmp_path):
    run = records(30, **{"policy/entropy": lambda s: 2.0 if s < 10 else 0.05,
                         "optim/grad_norm": lambda s: 50.0 if s == 20 else 1.0})
    first = Tracker(LIMITS)
    said = [w for r in run[:12] for w in first.observe(r)]
    torch.save(first.state_dict(), tmp_path / "health.pt")               # mid-streak, as a checkpoint holds it
    second = Tracker(LIMITS)
    second.load_state_dict(torch.load(tmp_path / "health.pt", weights_only=True))
    said += [w for r in run[12:] for w in second.observe(r)]
    assert [(w.kind, w.began) for w in said] == [("entropy_collapse", 10), ("grad_spike", 20)]
    assert second.warnings() == replay(run, LIMITS)


def test_the_report_shows_the_warnings_recomputed_from_metrics(tmp_path):
    config = {"train": {"prompts_per_step": B}, "kl": {"coef": 0.0}}
    stalled = records(30, **{"policy/entropy": lambda s: 2.0 if s < 10 else 0.05,
                             "groups/zero_signal_frac": lambda s: 0.5 if s <= 10 else 0.0})
    text = write_report(write_run(tmp_path / "stalled", config, metrics=stalled)).read_text(encoding="utf-8")
    assert "entropy collapse</b> from step 10" in text and "algo.entropy_coef" in text
    # zero_signal_frac 0.5 on steps 1..10 and 0.0 on 21..30
    assert "no signal): 50% over the first 10 steps, 0% over the last 10" in text
    healthy = write_report(write_run(tmp_path / "healthy", config, metrics=records(30))).read_text(encoding="utf-8")
    assert "No warnings" in healthy and "entropy collapse</b>" not in healthy
